"""TFLite from an ONNX-only source through onnx2tf + tensorflow-cpu in their own venv.

The conversion runs only where EDGEBENCH_ONNX2TF_PYTHON names that venv's python (made by
deploy/make-onnx2tf-env.sh); CI has no TensorFlow on purpose, so it is skipped there. The checks on a bad
setting need no TensorFlow and always run.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from converter.passes.tflite import ONNX2TF_ENV
from wire.manifest import load_manifest

VARIANTS = ("tflite_fp32", "tflite_fp16", "tflite_int8_dynamic", "tflite_int8")
needs_onnx2tf = pytest.mark.skipif(
    not os.environ.get(ONNX2TF_ENV),
    reason=f"{ONNX2TF_ENV} is not set (run deploy/make-onnx2tf-env.sh and export what it prints); "
    "CI has no TensorFlow by design",
)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A tiny 3-channel CNN (the case where onnx2tf would download calibration images) through 4 variants."""
    from converter.pipeline import convert
    from testkit.models import make_cnn_onnx

    d = tmp_path_factory.mktemp("onnx2tf")
    model = make_cnn_onnx(d / "tiny_rgb.onnx", channels=3, size=8)
    before = _sha(model)
    rng = np.random.default_rng(0)
    np.save(d / "calib.npy", rng.random((16, 3, 8, 8), dtype=np.float32))
    np.savez(d / "val.npz", x=rng.random((24, 3, 8, 8), dtype=np.float32), y=rng.integers(0, 10, 24))
    (d / "recipe.json").write_text(json.dumps(list(VARIANTS)))
    # any download attempt (onnx2tf's sample calibration images) fails through a dead proxy
    mp = pytest.MonkeyPatch()
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        mp.setenv(var, "http://127.0.0.1:9")
    mp.delenv("NO_PROXY", raising=False)
    mp.delenv("no_proxy", raising=False)
    lines: list[str] = []
    try:
        res = convert(
            str(model),
            calib=d / "calib.npy",
            val=d / "val.npz",
            out_dir=d / "out",
            recipe=d / "recipe.json",
            latency_budget_s=0.02,
            log=lines.append,
        )
    finally:
        mp.undo()
    return res, model, before, lines


@needs_onnx2tf
def test_onnx_only_source_gives_all_four_tflite_variants(converted):
    res, _, _, lines = converted
    status = {a.name: (a.status, a.error) for a in res.manifest.artifacts}
    for name in VARIANTS:
        assert status[name] == ("ok", None), (name, lines)
    arts = {a.name: a for a in res.manifest.artifacts}
    assert {arts[n].precision for n in VARIANTS} == {"fp32", "fp16", "int8-dynamic", "int8-full"}
    assert all(arts[n].format == "tflite" for n in VARIANTS)
    assert arts["tflite_int8"].passes[0].params == {"method": "auto", "max_samples": 64}
    assert any(line.startswith("    onnx2tf: ") for line in lines)  # converted once for all variants
    assert load_manifest(res.manifest_path) == res.manifest


@needs_onnx2tf
def test_fidelity_against_the_onnx_reference(converted):
    res, _, _, _ = converted
    arts = {a.name: a.fidelity for a in res.manifest.artifacts}
    assert arts["tflite_fp32"].max_abs_error < 1e-4
    assert arts["tflite_fp16"].cosine > 0.9999
    assert arts["tflite_int8_dynamic"].cosine > 0.999
    assert arts["tflite_int8"].cosine > 0.99  # calibrated on the local data, NCHW like the model takes it


@needs_onnx2tf
def test_artifacts_keep_the_onnx_input_layout_and_the_source_is_untouched(converted):
    from ai_edge_litert.interpreter import Interpreter

    res, model, before, _ = converted
    assert _sha(model) == before  # onnx2tf overwrites its input: it was given a copy
    for name in VARIANTS:
        art = res.manifest.artifact(name)
        interp = Interpreter(model_path=str(res.manifest_path.parent / art.file))
        assert list(interp.get_input_details()[0]["shape"]) == [1, 3, 8, 8], name
        assert interp.get_signature_list(), name  # LiteRT signature runners need one
    assert not (res.manifest_path.parent / ".work").exists()


def test_a_bad_interpreter_setting_fails_the_tflite_steps_with_a_clear_reason(
    tiny_cnn_onnx, tmp_path, monkeypatch
):
    from converter.pipeline import convert

    monkeypatch.setenv(ONNX2TF_ENV, str(tmp_path / "no-such-python"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((8, 1, 16, 16), dtype=np.float32), y=rng.integers(0, 10, 8))
    (tmp_path / "r.json").write_text(json.dumps(["tflite_fp32", "tflite_int8", "fp16"]))
    res = convert(
        str(tiny_cnn_onnx),
        calib=tmp_path / "d.npz",
        val=tmp_path / "d.npz",
        out_dir=tmp_path / "out",
        recipe=tmp_path / "r.json",
        latency_budget_s=0.01,
        log=lambda m: None,
    )
    status = {a.name: (a.status, a.error) for a in res.manifest.artifacts}
    for name in ("tflite_fp32", "tflite_int8"):
        assert status[name][0] == "failed"
        assert f"{ONNX2TF_ENV}={tmp_path / 'no-such-python'} is not an executable" in status[name][1]
    assert status["fp16"] == ("ok", None)  # the other passes continue
