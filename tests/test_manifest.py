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
            relative_error=0.02,
        ),
        host_latency_ms=0.5,
        host_latency_ci_ms=(0.45, 0.56),
    )
    degraded = ManifestArtifact(
        name="fp16",
        file="fp16.onnx",
        sha256="ef" * 32,
        size_bytes=600,
        gzip_bytes=500,
        format="onnx",
        precision="fp16",
        fidelity=Fidelity(top1_agreement=100.0, cosine=0.125, relative_error=1.3),
        status="degraded",
        error="cosine 0.1250 < 0.99",
    )
    noop = ManifestArtifact(
        name="int8_dynamic",
        file="int8_dynamic.onnx",
        sha256="12" * 32,
        size_bytes=1300,
        gzip_bytes=900,
        format="onnx",
        status="no-op",
        error="same ops and initializers as its input (fp32.onnx): the pass changed nothing",
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
        validation=ValidationInfo(
            dataset="val.npz",
            n=100,
            has_labels=True,
            output_kind="classification",
            fidelity_basis="accuracy",
            reference_classes=10,
            reference_majority_pct=12.0,
        ),
        max_accuracy_drop=1.0,
        min_cosine=0.99,
        artifacts=(art, degraded, noop, failed),
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
    assert data["artifacts"][0]["host_latency_ci_ms"] == [0.45, 0.56] and data["min_cosine"] == 0.99
    assert [a["status"] for a in data["artifacts"]] == ["ok", "degraded", "no-op", "failed"]
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
        (lambda d: d["artifacts"][0].update(status="meh"), "status: 'meh' is not one of"),
        (lambda d: d["artifacts"][0].update(host_latency_ci_ms=[2.0, 1.0]), "low <= high"),
        (lambda d: d["artifacts"][0].update(host_latency_ci_ms=1.0), r"expected \[low, high\]"),
        (lambda d: d["validation"].update(fidelity_basis="vibes"), "fidelity_basis"),
        (lambda d: d["validation"].update(reference_classes=1.5), "reference_classes"),
    ],
)
def test_invalid_manifests_are_refused(tmp_path, mutate, message):
    data = json.loads(_manifest().to_json())
    mutate(data)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=message):
        load_manifest(path)


def test_a_manifest_without_the_new_facts_still_reads(tmp_path):
    """Manifests written before fidelity bases and latency CIs: those facts read as null."""
    data = json.loads(_manifest().to_json())
    for key in ("min_cosine", "max_relative_error"):
        data.pop(key)
    for key in ("output_kind", "fidelity_basis", "reference_classes", "reference_majority_pct"):
        data["validation"].pop(key)
    data["artifacts"] = [data["artifacts"][0], data["artifacts"][3]]
    data["artifacts"][0].pop("host_latency_ci_ms")
    data["artifacts"][0]["fidelity"].pop("relative_error")
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    m = load_manifest(tmp_path)
    assert m.min_cosine is None and m.validation.fidelity_basis is None
    assert m.artifacts[0].host_latency_ci_ms is None and m.artifacts[0].fidelity.relative_error is None


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
