"""Artifacts to push: model files and converter manifests, verified (format bytes, sha256, size) and
registered in the ``artifacts`` table (where chunks are served from)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from collector.fleet.errors import FleetError
from collector.store.sqlite import register_artifact
from wire.artifacts import ArtifactError, artifact_info, file_sha256
from wire.schema import ArtifactRef, SchemaError


@dataclass(frozen=True)
class RegisteredArtifact:
    ref: ArtifactRef
    path: Path
    source: str  # "file" or the manifest's path
    fidelity: dict[str, Any] | None = None


log = logging.getLogger(__name__)


def _check_model_bytes(path: Path, fmt: str) -> None:
    """Cheap content check so a renamed text file is refused before any device downloads it."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if fmt == "tflite" and head[4:8] != b"TFL3":
        raise FleetError(f"{path}: not a TFLite flatbuffer (no 'TFL3' identifier)")
    if fmt == "onnx" and (not head or head[0] != 0x08):  # ModelProto starts with ir_version (field 1)
        raise FleetError(f"{path}: not an ONNX model (does not start with an ir_version field)")


def artifact_from_file(path: Path) -> RegisteredArtifact:
    try:
        info = artifact_info(path)
    except (ArtifactError, OSError) as exc:
        raise FleetError(str(exc)) from None
    _check_model_bytes(path, info.format)
    ref = ArtifactRef(
        name=info.name,
        sha256=info.sha256,
        size_bytes=info.size_bytes,
        format=info.format,
        precision=info.precision,
        model=info.model or path.stem,
        variant=info.variant,
    )
    return RegisteredArtifact(ref, path.resolve(), "file")


def artifacts_from_manifest(manifest_path: Path) -> list[RegisteredArtifact]:
    """Every ``ok`` artifact of a converter manifest, each verified against its declared sha256."""
    from wire.manifest import ManifestError, load_manifest

    try:
        manifest = load_manifest(manifest_path)
    except ManifestError as exc:
        raise FleetError(str(exc)) from None
    mpath = manifest_path / "manifest.json" if manifest_path.is_dir() else manifest_path
    out = []
    skipped = []
    for a in manifest.artifacts:
        if a.status != "ok":  # degraded, no-op, failed: never pushed (the manifest says why)
            why = f": {a.error}" if getattr(a, "error", "") else ""
            log.warning("not pushing %s: status %s%s", a.name, a.status, why)
            skipped.append(f"{a.name} {a.status}{why}")
            continue
        path = a.path(mpath)
        if not path.is_file():
            raise FleetError(f"{mpath}: artifact {a.name!r}: file {path} is missing")
        size = path.stat().st_size
        actual = file_sha256(path)
        if actual != a.sha256:
            raise FleetError(
                f"{mpath}: artifact {a.name!r}: sha256 mismatch (manifest says {a.sha256[:12]}..., "
                f"{path.name} has {actual[:12]}...): refusing to push it"
            )
        if size != a.size_bytes:
            raise FleetError(f"{mpath}: artifact {a.name!r}: size {size} != manifest's {a.size_bytes}")
        try:
            ref = ArtifactRef(
                name=a.name,
                sha256=a.sha256,
                size_bytes=size,
                format=a.format,  # type: ignore[arg-type]
                precision=a.precision,
                model=a.model or manifest.source.name,
                variant=a.variant,
            )
        except SchemaError as exc:
            raise FleetError(f"{mpath}: artifact {a.name!r}: {exc}") from None
        fidelity = {k: v for k, v in vars(a.fidelity).items()}
        out.append(RegisteredArtifact(ref, path.resolve(), str(mpath.resolve()), fidelity))
    if not out:
        raise FleetError(f"{mpath}: no artifact with status 'ok' to push ({'; '.join(skipped)[:400]})")
    return out


def collect_artifacts(paths: Iterable[str | Path]) -> list[RegisteredArtifact]:
    """Files (.onnx/.tflite) and manifests (manifest.json or a directory holding one), de-duplicated."""
    found: dict[str, RegisteredArtifact] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FleetError(f"{path}: no such file or directory")
        if path.is_dir() or path.suffix.lower() == ".json":
            items = artifacts_from_manifest(path)
        else:
            items = [artifact_from_file(path)]
        for item in items:
            found.setdefault(item.ref.sha256, item)
    if not found:
        raise FleetError("nothing to push: give model files or a manifest.json")
    return list(found.values())


def register(db: sqlite_utils.Database, artifacts: Sequence[RegisteredArtifact]) -> None:
    for a in artifacts:
        register_artifact(db, a.ref, path=a.path, source=a.source, fidelity=a.fidelity)
