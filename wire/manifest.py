"""manifest.json: what the converter produced and how faithful each artifact is (stdlib only).

Schema version 1 (``SCHEMA_VERSION``; what ``fleet push`` reads, see README "Convert a model")::

    {"schema_version": 1, "created_at": "...Z",
     "source": {"name", "path", "sha256", "format"},
     "validation": {"dataset", "n", "has_labels",
                    "output_kind": "classification"|"dense", "fidelity_basis": "accuracy"|"top1"|"continuous",
                    "reference_classes", "reference_majority_pct"  (optional, may be null)},
     "max_accuracy_drop": 1.0,
     "min_cosine": 0.99, "max_relative_error": null  (optional: the continuous-basis bounds),
     "recommended": "<artifact name>" | null,
     "artifacts": [{"name", "file" (relative to the manifest), "sha256", "size_bytes", "gzip_bytes",
                    "format": "onnx"|"tflite", "precision", "variant", "model",
                    "passes": [{"name", "params": {...}}],
                    "fidelity": {"accuracy", "reference_accuracy", "accuracy_delta", "top1_agreement",
                                 "max_abs_error", "mean_abs_error", "cosine", "relative_error"},
                    "host_latency_ms", "status": "ok"|"degraded"|"no-op"|"failed", "error",
                    "host_peak_mb", "host_latency_ci_ms": [low, high]  (optional extensions, may be null)}]}

``accuracy_delta`` is in percentage points, negative = worse than the reference. Values that could not be
measured (no labels, dense outputs, failed artifact) are ``null``. ``status``: ``ok`` = within the fidelity
bounds of the validation's ``fidelity_basis`` (accuracy/top-1: ``max_accuracy_drop``; continuous:
``min_cosine`` and ``max_relative_error``); ``degraded`` = made and measured but outside them; ``no-op`` =
the pass left the model as it was (same ops and initializers as its input, or bit-identical outputs with
no size win for a pass that claims another precision); ``failed`` = no artifact. ``error`` says why a
status is not ``ok``. Only ``ok`` artifacts can be recommended (``Manifest.ok_artifacts``).
``host_latency_ms`` is the median of interleaved rounds and ``host_latency_ci_ms`` its confidence interval;
``host_peak_mb`` the host's peak-RSS growth while the artifact is loaded and run at batch 1.

Readers: ``load_manifest(path)`` -> :class:`Manifest`; unknown extra keys are ignored (forward
compatible), missing required keys, an unknown status or a newer schema version raise
:class:`ManifestError` with a one-line reason.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from wire.errors import EdgebenchError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
FORMATS = ("onnx", "tflite")
STATUSES = ("ok", "degraded", "no-op", "failed")
OUTPUT_KINDS = ("classification", "dense")
FIDELITY_BASES = ("accuracy", "top1", "continuous")


class ManifestError(EdgebenchError):
    """A manifest that cannot be read or does not follow the schema."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class SourceInfo:
    name: str
    path: str
    sha256: str
    format: str  # "onnx" | "pytorch"


@dataclass(frozen=True)
class ValidationInfo:
    dataset: str
    n: int
    has_labels: bool
    output_kind: str | None = None  # "classification" | "dense" (None: not recorded)
    fidelity_basis: str | None = None  # "accuracy" | "top1" | "continuous"
    reference_classes: int | None = None  # distinct top-1 classes of the reference (classification)
    reference_majority_pct: float | None = None  # percent of samples in its most common class


@dataclass(frozen=True)
class PassRecord:
    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Fidelity:
    accuracy: float | None = None  # percent, 0-100
    reference_accuracy: float | None = None
    accuracy_delta: float | None = None  # points, negative = worse
    top1_agreement: float | None = None  # percent of samples whose argmax matches the reference
    max_abs_error: float | None = None
    mean_abs_error: float | None = None
    cosine: float | None = None
    relative_error: float | None = None  # ||out - ref|| / ||ref|| over the validation outputs
    # classification outputs: cosine of the class probabilities (softmax of the scores, or the scores
    # when they already are probabilities), the continuous bound classifiers are held to
    probability_cosine: float | None = None


@dataclass(frozen=True)
class ManifestArtifact:
    name: str
    file: str  # relative to the manifest's directory
    sha256: str
    size_bytes: int
    gzip_bytes: int
    format: str
    precision: str = "fp32"
    variant: str = ""
    model: str = ""
    passes: tuple[PassRecord, ...] = ()
    fidelity: Fidelity = field(default_factory=Fidelity)
    host_latency_ms: float | None = None
    status: str = "ok"
    error: str | None = None
    host_peak_mb: float | None = None  # extension: host peak-RSS growth, loaded and run at batch 1
    host_latency_ci_ms: tuple[float, float] | None = None  # extension: CI of host_latency_ms

    def path(self, manifest_path: Path) -> Path:
        """The artifact's absolute location given the manifest file it was listed in."""
        return Path(manifest_path).parent / self.file


@dataclass(frozen=True)
class Manifest:
    source: SourceInfo
    validation: ValidationInfo
    max_accuracy_drop: float
    artifacts: tuple[ManifestArtifact, ...] = ()
    min_cosine: float | None = None  # continuous-basis bounds (None: not recorded)
    max_relative_error: float | None = None
    recommended: str | None = None
    created_at: str = field(default_factory=utc_now)
    schema_version: int = SCHEMA_VERSION

    def artifact(self, name: str) -> ManifestArtifact:
        for art in self.artifacts:
            if art.name == name:
                return art
        raise ManifestError(f"no artifact named {name!r} in the manifest")

    @property
    def ok_artifacts(self) -> tuple[ManifestArtifact, ...]:
        return tuple(a for a in self.artifacts if a.status == "ok")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for art in data["artifacts"]:
            art["passes"] = [dict(p) for p in art["passes"]]
        order = [
            "schema_version",
            "created_at",
            "source",
            "validation",
            "max_accuracy_drop",
            "min_cosine",
            "max_relative_error",
            "recommended",
        ]
        return {**{k: data[k] for k in order}, "artifacts": data["artifacts"]}

    def to_json(self) -> str:
        return json.dumps(_finite(self.to_dict()), indent=2, sort_keys=False)


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _req(obj: dict[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise ManifestError(f"{where}: missing key {key!r}")
    value = obj[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ManifestError(f"{where}.{key}: expected {types}, got bool")
    if not isinstance(value, types):
        raise ManifestError(f"{where}.{key}: expected {types}, got {type(value).__name__}")
    return value


def _opt_num(obj: dict[str, Any], key: str, where: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ManifestError(f"{where}.{key}: expected a number or null, got {type(value).__name__}")
    return float(value)


def _opt_interval(obj: dict[str, Any], key: str, where: str) -> tuple[float, float] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise ManifestError(f"{where}.{key}: expected [low, high] or null")
    low, high = (_opt_num({"v": v}, "v", f"{where}.{key}") for v in value)
    if low is None or high is None or low > high:
        raise ManifestError(f"{where}.{key}: expected two numbers, low <= high")
    return (low, high)


def _opt_choice(obj: dict[str, Any], key: str, choices: tuple[str, ...], where: str) -> str | None:
    value = obj.get(key)
    if value is not None and value not in choices:
        raise ManifestError(f"{where}.{key}: {value!r} is not one of {choices}")
    return value


def _opt_int(obj: dict[str, Any], key: str, where: str) -> int | None:
    value = obj.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ManifestError(f"{where}.{key}: expected an integer or null, got {type(value).__name__}")
    return value


def _validation(val: dict[str, Any]) -> ValidationInfo:
    return ValidationInfo(
        dataset=_req(val, "dataset", str, "validation"),
        n=_req(val, "n", int, "validation"),
        has_labels=_req(val, "has_labels", bool, "validation"),
        output_kind=_opt_choice(val, "output_kind", OUTPUT_KINDS, "validation"),
        fidelity_basis=_opt_choice(val, "fidelity_basis", FIDELITY_BASES, "validation"),
        reference_classes=_opt_int(val, "reference_classes", "validation"),
        reference_majority_pct=_opt_num(val, "reference_majority_pct", "validation"),
    )


def _artifact(obj: Any, i: int) -> ManifestArtifact:
    where = f"artifacts[{i}]"
    fmt = _req(obj, "format", str, where)
    if fmt not in FORMATS:
        raise ManifestError(f"{where}.format: {fmt!r} is not one of {FORMATS}")
    status = obj.get("status", "ok")
    if status not in STATUSES:
        raise ManifestError(f"{where}.status: {status!r} is not one of {STATUSES}")
    passes = []
    for j, p in enumerate(obj.get("passes", []) or []):
        params = p.get("params", {}) if isinstance(p, dict) else None
        if not isinstance(params, dict):
            raise ManifestError(f"{where}.passes[{j}].params: expected an object")
        passes.append(PassRecord(name=_req(p, "name", str, f"{where}.passes[{j}]"), params=params))
    fid_obj = obj.get("fidelity") or {}
    if not isinstance(fid_obj, dict):
        raise ManifestError(f"{where}.fidelity: expected an object")
    fidelity = Fidelity(
        **{k: _opt_num(fid_obj, k, f"{where}.fidelity") for k in Fidelity.__dataclass_fields__}
    )
    error = obj.get("error")
    return ManifestArtifact(
        name=_req(obj, "name", str, where),
        file=_req(obj, "file", str, where),
        sha256=_req(obj, "sha256", str, where),
        size_bytes=_req(obj, "size_bytes", int, where),
        gzip_bytes=_req(obj, "gzip_bytes", int, where),
        format=fmt,
        precision=str(obj.get("precision", "fp32")),
        variant=str(obj.get("variant", "")),
        model=str(obj.get("model", "")),
        passes=tuple(passes),
        fidelity=fidelity,
        host_latency_ms=_opt_num(obj, "host_latency_ms", where),
        status=status,
        error=None if error is None else str(error),
        host_peak_mb=_opt_num(obj, "host_peak_mb", where),
        host_latency_ci_ms=_opt_interval(obj, "host_latency_ci_ms", where),
    )


def manifest_from_dict(data: Any) -> Manifest:
    if not isinstance(data, dict):
        raise ManifestError("manifest: expected a JSON object")
    version = _req(data, "schema_version", int, "manifest")
    if version > SCHEMA_VERSION or version < 1:
        raise ManifestError(f"manifest schema_version {version} is not supported (this build reads 1)")
    src = _req(data, "source", dict, "manifest")
    val = _req(data, "validation", dict, "manifest")
    arts = _req(data, "artifacts", list, "manifest")
    artifacts = tuple(_artifact(a, i) for i, a in enumerate(arts))
    recommended = data.get("recommended")
    if recommended is not None and recommended not in {a.name for a in artifacts}:
        raise ManifestError(f"manifest: recommended artifact {recommended!r} is not in the artifacts list")
    budget = data.get("max_accuracy_drop", 1.0)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise ManifestError("manifest.max_accuracy_drop: expected a number")
    return Manifest(
        schema_version=version,
        created_at=str(data.get("created_at", "")),
        source=SourceInfo(
            name=_req(src, "name", str, "source"),
            path=_req(src, "path", str, "source"),
            sha256=_req(src, "sha256", str, "source"),
            format=_req(src, "format", str, "source"),
        ),
        validation=_validation(val),
        max_accuracy_drop=float(budget),
        min_cosine=_opt_num(data, "min_cosine", "manifest"),
        max_relative_error=_opt_num(data, "max_relative_error", "manifest"),
        recommended=recommended,
        artifacts=artifacts,
    )


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate a manifest.json (or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    return manifest_from_dict(data)


def write_manifest(manifest: Manifest, path: str | os.PathLike[str]) -> Path:
    """Write atomically (temp file + rename); ``path`` may be a directory. Returns the file written."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(manifest.to_json() + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
