"""The converter end to end on tiny models: every pass, the manifest, the CLI and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from converter.models import digits_paths
from wire.manifest import load_manifest

ALL_PASSES = {
    "optimize",
    "fp16",
    "int8_dynamic",
    "int8_static",
    "tflite_fp32",
    "tflite_fp16",
    "tflite_int8_dynamic",
    "tflite_int8",
    "prune_magnitude",
    "prune_channels",
    "distill",
}


def tiny_cnn():
    """A tiny PyTorch CNN for 1x16x16 digits (the factory CI converts through every pass)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(256, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    ).eval()


@pytest.fixture(scope="module")
def digits_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    p = digits_paths()
    with np.load(p.calib) as c, np.load(p.val) as v:
        np.savez(d / "calib.npz", x=c["x"][:64], y=c["y"][:64])
        np.savez(d / "val.npz", x=v["x"][:96], y=v["y"][:96])
    return d / "calib.npz", d / "val.npz"


@pytest.fixture(scope="module")
def all_result(digits_data, tmp_path_factory):
    from converter.pipeline import convert

    calib, val = digits_data
    out = tmp_path_factory.mktemp("all")
    return convert(
        "tests.test_convert:tiny_cnn",
        calib=calib,
        val=val,
        out_dir=out,
        recipe="all",
        latency_budget_s=0.05,
        latency_rounds=3,
        log=lambda m: None,
    )


def test_every_pass_produces_a_checked_artifact(all_result):
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    from converter.evaluate import file_sha256

    manifest = load_manifest(all_result.manifest_path)
    by_name = {a.name: a for a in manifest.artifacts}
    failed = {a.name: a.error for a in manifest.artifacts if a.status == "failed"}
    assert failed == {}
    # an artifact outside the accuracy budget is degraded (kept, measured, explained), never "ok"
    assert (
        manifest.validation.fidelity_basis == "accuracy"
        and manifest.validation.output_kind == "classification"
    )
    for art in manifest.artifacts:
        drop = -art.fidelity.accuracy_delta
        assert art.status == ("ok" if drop <= manifest.max_accuracy_drop else "degraded"), art.name
        assert (art.error is None) == (art.status == "ok")
        assert art.host_latency_ci_ms[0] <= art.host_latency_ms <= art.host_latency_ci_ms[1]
    assert {p.name for a in manifest.artifacts for p in a.passes} == ALL_PASSES
    for art in manifest.artifacts:
        path = art.path(all_result.manifest_path)
        assert path.is_file() and file_sha256(path) == art.sha256 and path.stat().st_size == art.size_bytes
        assert art.gzip_bytes > 0 and art.host_latency_ms > 0
        assert art.fidelity.top1_agreement is not None and art.fidelity.cosine is not None
        if art.format == "onnx":
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        else:
            Interpreter(model_path=str(path)).allocate_tensors()
    ref = by_name["fp32"]
    assert ref.fidelity.top1_agreement == 100.0 and ref.fidelity.max_abs_error == 0.0
    assert (
        manifest.source.format == "pytorch" and manifest.validation.has_labels and manifest.validation.n == 96
    )
    assert by_name["fp16"].fidelity.cosine > 0.999 and by_name["fp16"].size_bytes < 0.7 * ref.size_bytes
    assert by_name["tflite_fp32"].fidelity.max_abs_error < 1e-3
    for name in ("int8_static", "tflite_int8", "tflite_int8-pt2e"):
        assert by_name[name].fidelity.cosine > 0.95, name
    # structured pruning really removes channels: the file shrinks; unstructured only zeroes weights
    assert by_name["prune_channels"].size_bytes < 0.5 * ref.size_bytes
    assert by_name["prune_magnitude"].gzip_bytes < ref.gzip_bytes
    assert any("sparsity 50.0%" in n for n in all_result.notes["prune_magnitude"])
    # chained steps start from the distilled student
    assert [p.name for p in by_name["distill-int8_static"].passes] == ["distill", "int8_static"]
    assert by_name["distill-int8_static"].size_bytes < by_name["int8_static"].size_bytes
    # recommended: ok, and not slower than fp32 by the latency intervals
    from converter.recommend import compare

    rec = by_name[manifest.recommended]
    assert rec.status == "ok" and compare(rec, ref) != "slower"
    assert (
        ref.host_peak_mb is not None
        and manifest.source.name == "tests.test_convert:tiny_cnn".rpartition(":")[2]
    )
    assert rec.fidelity.accuracy_delta >= -manifest.max_accuracy_drop


def test_onnx_source_runs_onnx_passes_and_explains_the_others(tiny_cnn_onnx, tmp_path, monkeypatch):
    from converter.pipeline import convert

    monkeypatch.delenv("EDGEBENCH_ONNX2TF_PYTHON", raising=False)  # the TensorFlow path is not here

    rng = np.random.default_rng(0)
    np.save(tmp_path / "calib.npy", rng.standard_normal((16, 1, 16, 16)).astype(np.float32))
    np.savez(tmp_path / "val.npz", x=rng.standard_normal((24, 1, 16, 16)), y=rng.integers(0, 10, 24))
    recipe = tmp_path / "recipe.json"
    steps = [
        "optimize",
        "fp16",
        "int8_dynamic",
        "int8_static",
        "prune_magnitude",
        "prune_channels",
        "tflite_fp32",
    ]
    recipe.write_text(json.dumps(steps))
    res = convert(
        str(tiny_cnn_onnx),
        calib=tmp_path / "calib.npy",
        val=tmp_path / "val.npz",
        out_dir=tmp_path / "out",
        recipe=recipe,
        latency_budget_s=0.05,
        log=lambda m: None,
    )
    status = {a.name: (a.status, a.error) for a in res.manifest.artifacts}
    for ok in ("fp32", "optimize", "fp16", "int8_dynamic", "int8_static"):
        assert status[ok] == ("ok", None), ok
    # the random tiny CNN predicts one class on random inputs: fidelity is judged on cosine, and magnitude
    # pruning without fine-tuning (ONNX source) is made, measured and kept, but not ok below 0.99
    assert res.manifest.validation.fidelity_basis == "continuous" and res.warnings
    pruned = res.manifest.artifact("prune_magnitude")
    assert pruned.status == ("ok" if pruned.fidelity.cosine >= 0.99 else "degraded"), pruned.error
    assert "PyTorch source" in status["prune_channels"][1]
    assert "onnx2tf" in status["tflite_fp32"][1]
    assert res.manifest.validation.has_labels  # float64 inputs were cast to the model's float32
    assert load_manifest(res.manifest_path) == res.manifest


def test_static_int8_fallback_keeps_sensitive_nodes_in_float(tiny_cnn_onnx, tmp_path):
    from converter.passes.quantize import sensitive_nodes
    from converter.pipeline import convert

    rng = np.random.default_rng(1)
    np.save(tmp_path / "d.npy", rng.standard_normal((16, 1, 16, 16)).astype(np.float32))
    (tmp_path / "r.json").write_text(json.dumps([{"pass": "int8_static", "params": {"max_float_nodes": 2}}]))
    # an impossible budget (-1 point) forces the fallback to run to its limit
    res = convert(
        str(tiny_cnn_onnx),
        calib=tmp_path / "d.npy",
        val=tmp_path / "d.npy",
        out_dir=tmp_path / "o",
        recipe=tmp_path / "r.json",
        max_accuracy_drop=-1.0,
        latency_budget_s=0.05,
        log=lambda m: None,
    )
    notes = " ".join(res.notes["int8_static"])
    assert "float fallback for 2 node(s)" in notes and "still" in notes
    import onnx

    from converter.data import load_dataset, onnx_input_specs
    from converter.passes.quantize import _name_nodes

    quant = tmp_path / "o" / "int8_static.onnx"
    ops = [n for n in onnx.load(str(quant)).graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(ops) == 2  # both kept in float: they are not wrapped in DequantizeLinear inputs only
    fp32 = _name_nodes(tmp_path / "o" / "fp32.onnx")
    ranked = sensitive_nodes(fp32, quant, load_dataset(tmp_path / "d.npy", onnx_input_specs(fp32)))
    assert {name for name, _ in ranked} == {"conv1", "fc"}


def test_dynamic_int8_refuses_convolutions(tiny_cnn_onnx, tmp_path):
    from converter.pipeline import convert

    np.save(tmp_path / "d.npy", np.zeros((4, 1, 16, 16), np.float32))
    (tmp_path / "r.json").write_text(json.dumps([{"pass": "int8_dynamic", "params": {"op_types": "Conv"}}]))
    res = convert(
        str(tiny_cnn_onnx),
        calib=tmp_path / "d.npy",
        val=tmp_path / "d.npy",
        out_dir=tmp_path / "o",
        recipe=tmp_path / "r.json",
        latency_budget_s=0.05,
        log=lambda m: None,
    )
    art = res.manifest.artifact("int8_dynamic")
    assert art.status == "failed" and "ConvInteger" in art.error and "8-17x slower" in art.error


def test_cli_converts_and_prints_the_comparison(tiny_mlp_onnx, tmp_path, monkeypatch):
    from converter.cli import convert

    monkeypatch.delenv("EDGEBENCH_ONNX2TF_PYTHON", raising=False)  # the TensorFlow path is not here

    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz", x=rng.standard_normal((32, 16)).astype(np.float32), y=rng.integers(0, 10, 32)
    )
    (tmp_path / "r.json").write_text(json.dumps(["optimize", "int8_dynamic", "tflite_fp32"]))
    result = CliRunner().invoke(
        convert,
        [
            str(tiny_mlp_onnx),
            "--recipe",
            str(tmp_path / "r.json"),
            "--calib",
            str(tmp_path / "d.npz"),
            "--val",
            str(tmp_path / "d.npz"),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "[2/3] int8_dynamic" in result.output and "x smaller" in result.output
    assert "95% CI ms" in result.output and "vs fp32" in result.output and "mem MB b1" in result.output
    assert "fidelity (classification outputs, 32 samples): accuracy on the labels" in result.output
    assert "failed: tflite_fp32: TFLite from an ONNX-only source" in result.output
    assert f"manifest: {tmp_path / 'out' / 'manifest.json'}" in result.output
    assert load_manifest(tmp_path / "out").artifact("int8_dynamic").precision == "int8-dynamic"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("not_a_model", "not a model onnxruntime can load"),
        ("bad_shape", "input 'x' has shape [4, 12]"),
        ("bad_dtype", "is int64, the model wants float32"),
        ("unknown_pass", "unknown pass 'shrink'"),
        ("bad_param", "unknown parameter(s) ['bogus']"),
        ("bad_choice", "'Magic' is not one of"),
        ("bad_factory", "cannot import 'nope_pkg.mod'"),
    ],
)
def test_bad_input_gives_one_clear_line(case, message, tiny_mlp_onnx, tmp_path):
    from converter.cli import convert

    model, recipe = str(tiny_mlp_onnx), "default"
    data = tmp_path / "d.npy"
    np.save(data, np.zeros((4, 16), np.float32))
    if case == "not_a_model":
        model = str(tmp_path / "m.onnx")
        (tmp_path / "m.onnx").write_text("hello")
    elif case == "bad_shape":
        np.save(data, np.zeros((4, 12), np.float32))
    elif case == "bad_dtype":
        np.save(data, np.zeros((4, 16), np.int64))
    elif case in ("unknown_pass", "bad_param", "bad_choice"):
        recipe = str(tmp_path / "r.json")
        step = {
            "unknown_pass": {"pass": "shrink"},
            "bad_param": {"pass": "fp16", "params": {"bogus": 1}},
            "bad_choice": {"pass": "int8_static", "params": {"calibration": "Magic"}},
        }[case]
        (tmp_path / "r.json").write_text(json.dumps([step]))
    elif case == "bad_factory":
        model = "nope_pkg.mod:factory"
    result = CliRunner().invoke(
        convert,
        [model, "--recipe", recipe, "--calib", str(data), "--val", str(data), "--out", str(tmp_path / "out")],
    )
    assert result.exit_code == 1
    assert message in result.output, result.output
    assert "Traceback" not in result.output


def test_image_folder_preprocessing(tmp_path):
    from PIL import Image

    from converter.data import InputSpec, load_dataset

    for cls, value in (("cat", 0), ("dog", 255)):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (10, 6), (value, value, value)).save(tmp_path / cls / "a.png")
    spec = [InputSpec("x", (None, 1, 4, 4), "float32")]
    data = load_dataset(tmp_path, spec, mean=(0.5,), std=(0.5,))
    assert data.inputs["x"].shape == (2, 1, 4, 4) and data.classes == ("cat", "dog")
    assert data.labels.tolist() == [0, 1]
    assert np.allclose(data.inputs["x"][0], -1.0) and np.allclose(data.inputs["x"][1], 1.0)
    nhwc = load_dataset(tmp_path, [InputSpec("x", (None, 4, 4, 3), "float32")])
    assert nhwc.inputs["x"].shape == (2, 4, 4, 3) and np.allclose(nhwc.inputs["x"][1], 1.0)


def test_fidelity_metrics_are_exact():
    from converter.fidelity import accuracy_drop, fidelity

    ref = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    out = np.array([[1.0, 0.5], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    f = fidelity(ref, out, np.array([0, 1, 1, 1]))
    assert f.top1_agreement == 75.0 and f.accuracy == 100.0 and f.reference_accuracy == 75.0
    assert f.accuracy_delta == 25.0 and accuracy_drop(f) == -25.0
    assert f.max_abs_error == 1.0 and f.mean_abs_error == pytest.approx(2.5 / 8)
    assert f.cosine == pytest.approx(3 / (2 * np.sqrt(4.25)))
    assert f.relative_error == pytest.approx(np.sqrt(2.25) / 2)


def test_shipped_digits_model_is_accurate_and_small():
    from converter.data import load_dataset, onnx_input_specs
    from converter.evaluate import reference_outputs

    p = digits_paths()
    assert p.onnx.stat().st_size < 1_500_000
    val = load_dataset(p.val, onnx_input_specs(p.onnx))
    acc = np.mean(reference_outputs(p.onnx, val).argmax(1) == val.labels) * 100
    assert val.n == 540 and acc >= 97.0


def test_list_passes_documents_every_parameter():
    from converter.cli import convert

    result = CliRunner().invoke(convert, ["--list-passes"])
    assert result.exit_code == 0
    for name in ALL_PASSES:
        assert f"{name}:" in result.output
    assert "temperature (float, default 4.0)" in result.output
    assert "calibration (MinMax|Entropy|Percentile, default 'MinMax')" in result.output


def test_a_run_without_host_latency_still_logs_every_pass(tiny_mlp_onnx, tmp_path):
    from converter.pipeline import convert

    rng = np.random.default_rng(0)
    data = tmp_path / "x.npz"
    np.savez(data, x=rng.standard_normal((16, 16)).astype(np.float32))
    lines: list[str] = []
    result = convert(
        str(tiny_mlp_onnx), calib=data, val=data, out_dir=tmp_path / "out", recipe="default",
        latency_budget_s=0, log=lines.append,
    )  # fmt: skip
    ok = [a for a in result.manifest.artifacts if a.status == "ok" and a.name in ("optimize", "fp16")]
    assert len(ok) == 2
    assert any("latency not measured" in line for line in lines)
    assert all(a.host_latency_ms is None for a in result.manifest.artifacts)


def _linear_then(op_name: str):
    import torch
    from torch import nn

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.fc = nn.Linear(16, 8)

        def forward(self, x):
            y = self.fc(x)
            if op_name == "nonzero":  # exports to ONNX; no TFLite lowering
                return y + torch.nonzero(y > 100).float().sum()
            return torch.cumprod(y, dim=1)  # no ONNX function in torch 2.13's exporter

    return Model().eval()


def nonzero_model():
    return _linear_then("nonzero")


def cumprod_model():
    return _linear_then("cumprod")


def test_unsupported_ops_are_read_from_exporter_and_converter_messages():
    from converter.errors import describe_failure, unsupported_ops

    overload = "<OpOverload(op='prims.prod', overload='default')>"
    onnx = RuntimeError(f"Failed.\n<class 'DispatchError'>: No ONNX function found for {overload}")
    assert unsupported_ops(onnx) == ["prims.prod"]
    assert unsupported_ops(RuntimeError("Lowering not found: aten.erfinv.default")) == ["aten.erfinv"]
    mlir = ValueError(
        "loc(x): error: failed to legalize operation 'tf.Erfinv' that was explicitly marked illegal"
    )
    assert unsupported_ops(mlir) == ["tf.Erfinv"]
    try:
        try:
            raise KeyError("while tracing aten.nonzero.default")
        except KeyError as inner:
            raise TypeError("Abstract tracer value encountered") from inner
    except TypeError as chained:
        assert unsupported_ops(chained) == ["aten.nonzero"]  # named only in the cause
        assert describe_failure("litert-torch", chained) == (
            "litert-torch: unsupported op aten.nonzero (TypeError: Abstract tracer value encountered)"
        )
    assert unsupported_ops(RuntimeError("out of memory")) == []


def test_an_op_tflite_lacks_fails_that_pass_naming_the_op_and_the_onnx_passes_stand(tmp_path):
    from converter.pipeline import convert

    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32))
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps([{"pass": "fp16"}, {"pass": "tflite_fp32"}]))
    res = convert(
        "tests.test_convert:nonzero_model",
        calib=data,
        val=data,
        out_dir=tmp_path / "out",
        recipe=str(recipe),
        latency_budget_s=0.01,
        log=lambda m: None,
    )
    arts = {a.name: a for a in res.manifest.artifacts}
    assert arts["fp16"].status == "ok"
    assert arts["tflite_fp32"].status == "failed"
    assert (
        "litert-torch cannot convert the model to TFLite: unsupported op aten.nonzero"
        in arts["tflite_fp32"].error
    )


def test_an_op_the_onnx_exporter_lacks_is_named(tmp_path):
    from converter.cli import convert

    data = tmp_path / "d.npy"
    np.save(data, np.zeros((4, 16), np.float32))
    result = CliRunner().invoke(
        convert,
        [
            "tests.test_convert:cumprod_model",
            "--calib",
            str(data),
            "--val",
            str(data),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 1
    assert "ONNX export failed: unsupported op prims.prod" in result.output, result.output
    assert "Traceback" not in result.output
