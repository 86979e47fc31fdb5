"""Did a pass change anything? An ONNX artifact is a ``no-op`` of the ONNX model its pass started from when

- its graph is the same: the same multiset of op types (with domains) and the same initializers (dtype,
  shape and bytes, whatever their names), even if the file differs (metadata, opset entries, names); or
- its pass claims another precision (fp16, int8, ...) but its outputs on the validation set are
  bit-identical to the input's and the file is no smaller: nothing was converted that matters.

(A same-precision rewrite with bit-identical outputs, e.g. ORT fusions, is not a no-op: it may be
faster; the timing decides.) TFLite artifacts change format, so they are never compared here.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np


def graph_signature(path: Path) -> tuple[Counter[str], Counter[str]]:
    """(op types with domains, initializer fingerprints), each as a multiset."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    ops = Counter(f"{n.domain or 'ai.onnx'}::{n.op_type}" for n in model.graph.node)
    inits: Counter[str] = Counter()
    for t in model.graph.initializer:
        arr = numpy_helper.to_array(t)
        digest = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
        inits[f"{arr.dtype}{list(arr.shape)}:{digest}"] += 1
    return ops, inits


def unchanged_reason(
    start: Path,
    artifact: Path,
    *,
    start_outputs: np.ndarray,
    outputs: np.ndarray,
    claims_new_precision: bool,
) -> str | None:
    """Why the artifact is a no-op of ``start`` (see the module docstring), or None when it is not."""
    if artifact.suffix != ".onnx" or start.suffix != ".onnx":
        return None
    if graph_signature(start) == graph_signature(artifact):
        return f"same ops and initializers as its input ({start.name}): the pass changed nothing"
    grew = artifact.stat().st_size >= start.stat().st_size
    if claims_new_precision and grew and np.array_equal(start_outputs, outputs):
        return (
            f"outputs bit-identical to its input's ({start.name}) and no smaller "
            f"({artifact.stat().st_size} >= {start.stat().st_size} bytes): nothing was converted"
        )
    return None
