"""The converter's one exception class: a user-facing, one-line reason (the CLI prints it, no traceback)."""

from __future__ import annotations

import re

from wire.errors import EdgebenchError


class ConvertError(EdgebenchError):
    """Bad input or a pass that cannot run; the message says what and, where it helps, which pass/op."""


# What the exporters and converters say when an operator has no translation (torch 2.13's ONNX exporter,
# litert-torch, the TensorFlow/MLIR converter behind onnx2tf and ai-edge-quantizer).
_OP_PATTERNS = (
    re.compile(r"No ONNX function found for <OpOverload\(op='([\w.]+)'"),
    re.compile(r"Lowering not found: ([\w.]+)"),
    re.compile(r"failed to legalize operation '([\w.]+)'"),
    re.compile(r"'([\w.]+)' op is neither a custom op nor a flex op"),
    re.compile(r"\b((?:aten|prims)\.[a-z_0-9]+)(?:\.\w+)?"),  # a torch op named anywhere in the message
)


def unsupported_ops(exc: BaseException) -> list[str]:
    """The operators an exporter/converter error names (most specific pattern first), without overload
    suffixes (``aten.cumprod.default`` -> ``aten.cumprod``); empty when it names none."""
    texts, seen = [], set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:  # the exception and its causes
        seen.add(id(cur))
        texts.append(str(cur))
        cur = cur.__cause__ or cur.__context__
    text = "\n".join(texts)
    for pattern in _OP_PATTERNS:
        found = []
        for name in pattern.findall(text):
            name = re.sub(r"\.(default|Tensor|Scalar|int|dim|out)$", "", name)
            if name not in found:
                found.append(name)
        if found:
            return found[:3]
    return []


def describe_failure(what: str, exc: BaseException) -> str:
    """One line: ``what`` + the unsupported op(s) when the error names any + the error's first line."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    ops = unsupported_ops(exc)
    if ops:
        return f"{what}: unsupported op {', '.join(ops)} ({type(exc).__name__}: {first})"
    return f"{what}: {type(exc).__name__}: {first}"
