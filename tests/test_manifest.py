"""wire.manifest: round trip, validation errors, stdlib-only import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from wire.manifest import (
    Fidelity,
    Manifest,
    ManifestArtifact,
    ManifestError,
    PassRecord,
    SourceInfo,
    ValidationInfo,
    load_manifest,
    write_manifest,
)


def _manifest() -> Manifest:
    art = ManifestArtifact(
        name="onnx-int8-static",
        file="onnx-int8-static.onnx",
        sha256="ab" * 32,
        size_bytes=1234,
        gzip_bytes=999,
        format="onnx",
        precision="int8-static",
        variant="onnx-int8-static",
        model="digits",
        passes=(
            PassRecord("optimize", {"level": "extended"}),
            PassRecord("int8_static", {"per_channel": True}),
        ),
        fidelity=Fidelity(
            accuracy=99.0,
            reference_accuracy=99.5,
            accuracy_delta=-0.5,
            top1_agreement=99.2,
            max_abs_error=0.1,
            mean_abs_error=0.01,
            cosine=0.999,
        ),
        host_latency_ms=0.5,
    )
    failed = ManifestArtifact(
        name="tflite-fp16",
        file="",
        sha256="",
        size_bytes=0,
        gzip_bytes=0,
        format="tflite",
        status="failed",
        error="boom",
    )
    return Manifest(
        source=SourceInfo(name="digits", path="/x/digits.onnx", sha256="cd" * 32, format="onnx"),
        validation=ValidationInfo(dataset="val.npz", n=100, has_labels=True),
        max_accuracy_drop=1.0,
        artifacts=(art, failed),
        recommended="onnx-int8-static",
    )


def test_round_trip(tmp_path):
    m = _manifest()
    path = write_manifest(m, tmp_path)
    assert path.name == "manifest.json"
    back = load_manifest(path)
    assert back == m
    assert back.artifact("onnx-int8-static").path(path) == tmp_path / "onnx-int8-static.onnx"
    assert [a.name for a in back.ok_artifacts] == ["onnx-int8-static"]
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1 and data["recommended"] == "onnx-int8-static"
    assert data["artifacts"][0]["passes"][1] == {"name": "int8_static", "params": {"per_channel": True}}
    assert load_manifest(tmp_path) == m  # a directory works too


def test_nan_becomes_null(tmp_path):
    m = _manifest()
    art = m.artifacts[0]
    from dataclasses import replace

    m2 = replace(m, artifacts=(replace(art, fidelity=replace(art.fidelity, cosine=float("nan"))),))
    back = load_manifest(write_manifest(m2, tmp_path / "m.json"))
    assert back.artifacts[0].fidelity.cosine is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(schema_version=2), "schema_version 2"),
        (lambda d: d.pop("source"), "missing key 'source'"),
        (lambda d: d["artifacts"][0].update(format="pt"), "format"),
        (lambda d: d["artifacts"][0].update(size_bytes="big"), "size_bytes"),
        (lambda d: d.update(recommended="nope"), "recommended"),
        (lambda d: d["artifacts"][0]["fidelity"].update(cosine="x"), "cosine"),
    ],
)
def test_invalid_manifests_are_refused(tmp_path, mutate, message):
    data = json.loads(_manifest().to_json())
    mutate(data)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=message):
        load_manifest(path)


def test_unreadable(tmp_path):
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path / "bad.json")


def test_unknown_keys_are_ignored(tmp_path):
    data = json.loads(_manifest().to_json())
    data["future"] = 1
    data["artifacts"][0]["future"] = 2
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    assert load_manifest(tmp_path).recommended == "onnx-int8-static"


def test_manifest_module_is_stdlib_only():
    probe = (
        "import sys, wire.manifest; "
        "print(sorted(m for m in ('numpy','onnx','torch','click') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
