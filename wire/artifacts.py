"""Artifact identity: content hash, format from the extension, precision guessed from the name."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from wire.errors import EdgebenchError
from wire.schema import ArtifactInfo

FORMATS = {".onnx": "onnx", ".tflite": "tflite"}


class ArtifactError(EdgebenchError):
    """A file that is not a usable model artifact (missing, a directory, empty, an unknown extension)."""

    reason = "bad-artifact"


UNKNOWN_SHA256 = "0" * 64  # for records about a file that could not be read

# the first matching pattern wins; checked against the lower-cased file stem
_PRECISION_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"int8[-_]?static|static[-_]?int8|qdq|full[-_]?int8", "int8-static"),
    (r"int8[-_]?dynamic|dynamic[-_]?int8|dyn[-_]?int8|dynamic[-_]?range", "int8-dynamic"),
    (r"int8|uint8|quant", "int8"),
    (r"fp16|float16|half", "fp16"),
    (r"fp32|float32", "fp32"),
)


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def model_format(path: str | Path) -> str:
    """'onnx' or 'tflite' from the extension; ArtifactError otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ArtifactError(
            f"{Path(path).name}: unsupported model extension {suffix or '(none)'!r} (use .onnx or .tflite)"
        )
    return FORMATS[suffix]


def guess_precision(name: str) -> str:
    stem = Path(name).stem.lower()
    for pattern, precision in _PRECISION_PATTERNS:
        if re.search(pattern, stem):
            return precision
    return "fp32"


def check_model_file(path: str | Path) -> Path:
    """A readable, non-empty .onnx/.tflite file, or ArtifactError saying what is wrong."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{p}: no such file")
    if p.is_dir():
        raise ArtifactError(f"{p}: is a directory, not a model file")
    model_format(p)
    if p.stat().st_size == 0:
        raise ArtifactError(f"{p}: empty file")
    return p


def artifact_info(
    path: str | Path,
    *,
    name: str | None = None,
    precision: str | None = None,
    model: str = "",
    variant: str = "",
) -> ArtifactInfo:
    p = check_model_file(path)
    return ArtifactInfo(
        name=name or p.name,
        sha256=file_sha256(p),
        format=model_format(p),  # type: ignore[arg-type]
        size_bytes=p.stat().st_size,
        precision=precision or guess_precision(name or p.name),
        model=model,
        variant=variant,
    )


def placeholder_artifact(path: str | Path) -> ArtifactInfo:
    """Best-effort identity for a file that cannot be benchmarked (for a 'failed' record)."""
    p = Path(path)
    fmt = FORMATS.get(p.suffix.lower(), "unknown")
    try:
        sha, size = (file_sha256(p), p.stat().st_size) if p.is_file() else (UNKNOWN_SHA256, 0)
    except OSError:
        sha, size = UNKNOWN_SHA256, 0
    return ArtifactInfo(
        name=p.name, sha256=sha, format=fmt, size_bytes=size, precision=guess_precision(p.name)
    )  # type: ignore[arg-type]
