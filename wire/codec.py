"""Strict conversion between frozen dataclasses and JSON-compatible values (stdlib only).

The wire format is declared as type-hinted frozen dataclasses; this module walks those hints
to encode them to plain dicts and to decode and *validate* plain dicts back. Any mismatch raises
:class:`SchemaError` naming the dotted path of the offending field, e.g. ``latency.p50_ms``.

Supported annotations: ``int``, ``float`` (ints accepted), ``str``, ``bool``, ``None`` unions
(``X | None``), ``Literal[...]``, ``tuple[X, ...]``, ``dict[str, X]`` and nested dataclasses.

:func:`load_json` is the one strict JSON decoder of the wire format (agent and collector): UTF-8 only,
bounded nesting, no duplicate keys, no NaN/Infinity, 64-bit integers, finite floats, no lone surrogates.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from functools import cache
from itertools import accumulate
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from wire.errors import EdgebenchError

T = TypeVar("T")


SCHEMA_REASONS = ("bad-json", "unknown-schema-version", "missing-field", "invalid-field")


class SchemaError(EdgebenchError, ValueError):
    """A message does not match the wire format. ``field`` is the dotted path of the culprit; ``reason``
    one of :data:`SCHEMA_REASONS` (the collector's dead-letter classes): "missing-field" for a missing
    required field, "invalid-field" unless the raiser says otherwise."""

    def __init__(self, message: str, field: str | None = None, reason: str | None = None):
        self.field = field
        if reason is None:
            reason = "missing-field" if message == "missing required field" else "invalid-field"
        super().__init__(f"{field}: {message}" if field else message, reason=reason)


MAX_DEPTH = 32  # nested arrays/objects in one message (the wire format itself needs 4)
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # what SQLite stores; beyond is an error, not a silent float

_ESCAPE = re.compile(r"\\.", re.DOTALL)
_STRING = re.compile(r'"[^"]*"')  # once escapes are gone, a string has no inner quote
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _Reject(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Reject(f"duplicate key {key[:64]!r}")
            seen.add(key)
    return out


def _bounded_int(text: str) -> int:
    value = int(text) if len(text) <= 20 else None  # never convert thousands of digits
    if value is None or not INT_MIN <= value <= INT_MAX:
        raise _Reject(f"integer {text[:24]}{'...' if len(text) > 24 else ''} out of the 64-bit range")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Reject(f"number {text[:24]} out of range")
    return value


def _constant(name: str) -> Any:
    raise _Reject(f"{name} is not JSON")


def _depth(text: str) -> int:
    """Deepest nesting of arrays/objects, by a linear scan (no recursion; strings are skipped)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return 0  # cannot be deeper than that: skip the scan
    if '"' in text:
        text = _STRING.sub("", _ESCAPE.sub("", text))
    steps = _NOT_BRACKET.sub("", text)
    return max(accumulate(map(_STEP.__getitem__, steps)), default=0)


def load_json(payload: str | bytes) -> Any:
    """Parse one wire message strictly; :class:`SchemaError` ``not valid JSON: <why>`` otherwise.

    Bytes must be UTF-8 without a byte order mark (never UTF-16/32 or latin-1). The nesting depth is
    checked by a byte scan before parsing (never a RecursionError); duplicate keys, NaN/Infinity,
    integers outside 64 bits, numbers that overflow a double and lone surrogates (``\\ud800``) are
    refused. Never raises anything but :class:`SchemaError`.
    """
    try:
        if isinstance(payload, (bytes, bytearray, memoryview)):
            raw = bytes(payload)
            if raw.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
                raise _Reject("a byte order mark: the wire format is UTF-8 without BOM")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _Reject(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
        elif isinstance(payload, str):
            text = payload
            if text.startswith("\ufeff"):
                raise _Reject("a byte order mark: the wire format is UTF-8 without BOM")
        else:
            raise _Reject(f"expected bytes or text, got {type(payload).__name__}")
        if "\x00" in text:
            raise _Reject("a NUL byte (UTF-16 or UTF-32? the wire format is UTF-8)")
        depth = _depth(text)
        if depth > MAX_DEPTH:
            raise _Reject(f"nested {depth} deep (limit {MAX_DEPTH})")
        data = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_int=_bounded_int,
            parse_float=_finite_float,
            parse_constant=_constant,
        )
        if _SURROGATE_ESCAPE.search(text) or not isinstance(payload, (bytes, bytearray, memoryview)):
            try:  # a lone surrogate (an escape, or in text given as str) cannot be encoded as UTF-8
                json.dumps(data, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise _Reject("a lone surrogate in a string") from None
    except (ValueError, RecursionError) as exc:  # _Reject, json.JSONDecodeError, int digit limits
        raise SchemaError(f"not valid JSON: {exc}", reason="bad-json") from None
    return data


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def encode(obj: Any) -> Any:
    """Dataclass (or nested value) -> JSON-compatible value. Tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [encode(v) for v in obj]
    if isinstance(obj, dict):
        return {k: encode(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        raise SchemaError(f"non-finite float {obj!r} cannot go on the wire")
    return obj


def decode(cls: type[T], data: Any, path: str = "") -> T:
    """Validate ``data`` against dataclass ``cls`` and build it. Unknown keys are rejected."""
    return _decode_value(cls, data, path)


def _describe(value: Any) -> str:
    return type(value).__name__ if value is not None else "null"


def _decode_dataclass(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise SchemaError(f"expected an object for {cls.__name__}, got {_describe(data)}", path or None)
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    names = set()
    for f in dataclasses.fields(cls):
        names.add(f.name)
        sub = f"{path}.{f.name}" if path else f.name
        if f.name in data:
            kwargs[f.name] = _decode_value(hints[f.name], data[f.name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SchemaError("missing required field", sub)
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise SchemaError(f"unknown field (known: {', '.join(sorted(names))})", where)
    try:
        return cls(**kwargs)
    except SchemaError as exc:  # __post_init__ validation names a field relative to cls
        message = str(exc)[len(exc.field) + 2 :] if exc.field else str(exc)
        inner = f"{path}.{exc.field}" if path and exc.field else (exc.field or path or None)
        raise SchemaError(message, inner, exc.reason) from None
    except (TypeError, ValueError) as exc:
        raise SchemaError(str(exc), path or None) from exc


def _decode_value(tp: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _decode_dataclass(tp, value, path)
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise SchemaError("must not be null", path)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _decode_value(arg, value, path)
            except SchemaError as exc:
                errors.append(exc)
        raise (
            errors[0]
            if len(errors) == 1
            else SchemaError(f"no variant of {tp} accepts {_describe(value)}", path)
        )
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed or isinstance(value, bool) != any(isinstance(a, bool) for a in allowed):
            raise SchemaError(f"must be one of {list(allowed)}, got {value!r}", path)
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SchemaError(f"expected a list, got {_describe(value)}", path)
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode_value(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise SchemaError(f"expected {len(args)} items, got {len(value)}", path)
        return tuple(
            _decode_value(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"expected an object, got {_describe(value)}", path)
        _key_t, val_t = get_args(tp)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise SchemaError("object keys must be strings", path)
            out[k] = _decode_value(val_t, v, f"{path}.{k}")
        return out
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"expected a boolean, got {_describe(value)}", path)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"expected an integer, got {_describe(value)}", path)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(f"expected a number, got {_describe(value)}", path)
        if not math.isfinite(value):
            raise SchemaError(f"expected a finite number, got {value!r}", path)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SchemaError(f"expected a string, got {_describe(value)}", path)
        return value
    if tp is type(None):
        if value is not None:
            raise SchemaError(f"expected null, got {_describe(value)}", path)
        return None
    raise SchemaError(f"unsupported annotation {tp!r}", path)  # a bug in the schema itself
