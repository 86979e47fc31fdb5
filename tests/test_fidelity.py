"""Fidelity by output kind, the ok/degraded/no-op statuses and the recommendation's tie rule, on tiny
models built here (onnx.helper) and on the shipped digits CNN."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from converter.models import digits_paths
from wire.manifest import Fidelity, ManifestArtifact, PassRecord, load_manifest

FAST = {"latency_budget_s": 0.05, "latency_rounds": 3}


# ---- models built in the test ----------------------------------------------------------------------
def _save(nodes, inputs, outputs, inits, path: Path) -> Path:
    import onnx
    from onnx import helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        path.stem,
        inputs,
        outputs,
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def one_class_model(path: Path) -> Path:
    """x[b, 16] -> Gemm -> logits[b, 10]; class 0's logit is a constant 8 that no other class reaches,
    so the model predicts class 0 for every input (an uninformative reference)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((10, 16)) * 0.3
    w[0] = 0.0
    b = np.zeros(10)
    b[0] = 8.0
    return _save(
        [helper.make_node("Gemm", ["x", "w", "b"], ["logits"], transB=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        {"w": w, "b": b},
        path,
    )


def dense_model(path: Path) -> Path:
    """x[b, 1, 8, 8] -> Conv3x3 -> Sigmoid -> a probability map [b, 1, 8, 8] (segmentation-like)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(1)
    return _save(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Sigmoid", ["c"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        {"w": rng.standard_normal((1, 1, 3, 3)) * 0.5, "b": [0.1]},
        path,
    )


def no_matmul_model(path: Path) -> Path:
    """x[b, 8] * s -> Relu: nothing for dynamic int8 (MatMul/Gemm) to quantize."""
    from onnx import TensorProto, helper

    return _save(
        [helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        {"s": np.full(8, 0.5)},
        path,
    )


@dataclass(frozen=True)
class _NoParams:
    pass


@pytest.fixture
def corrupt_fp16(monkeypatch):
    """A pass like a broken fp16 conversion: every weight's sign flipped, labelled fp16."""
    from converter import passes

    def run(ctx, base, params, out_name):
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(base.onnx))
        for i, init in enumerate(model.graph.initializer):
            arr = numpy_helper.to_array(init)
            if arr.ndim >= 2:
                model.graph.initializer[i].CopyFrom(numpy_helper.from_array(-arr, init.name))
        out = ctx.out_dir / f"{out_name}.onnx"
        onnx.save(model, str(out))
        return passes.Output(out, "onnx", "fp16")

    passes.load_all()
    monkeypatch.setitem(
        passes.REGISTRY, "corrupt_fp16", passes.PassSpec("corrupt_fp16", _NoParams, run, "test")
    )
    return "corrupt_fp16"


def _convert(model: Path, tmp_path: Path, steps: list, x: np.ndarray, y=None, **kw):
    from converter.pipeline import convert

    data = tmp_path / "d.npz"
    np.savez(data, x=x, **({} if y is None else {"y": y}))
    (tmp_path / "r.json").write_text(json.dumps(steps))
    lines: list[str] = []
    res = convert(
        str(model), calib=data, val=data, out_dir=tmp_path / "out", recipe=tmp_path / "r.json",
        log=lines.append, **{**FAST, **kw},
    )  # fmt: skip
    return res, {a.name: a for a in res.manifest.artifacts}, "\n".join(lines)


# ---- fidelity by output kind -----------------------------------------------------------------------
def test_an_uninformative_reference_warns_and_falls_back_to_continuous_fidelity(tmp_path, corrupt_fp16):
    model = one_class_model(tmp_path / "one_class.onnx")
    x = np.random.default_rng(2).standard_normal((64, 16)).astype(np.float32)
    res, arts, log = _convert(model, tmp_path, ["fp16", corrupt_fp16], x)
    v = res.manifest.validation
    assert (v.output_kind, v.fidelity_basis, v.reference_classes, v.reference_majority_pct) == (
        "classification", "continuous", 1, 100.0,
    )  # fmt: skip
    assert "warning: the fp32 reference predicts class 0 for 100.0% of the 64 validation samples" in log
    assert res.warnings and "top-1 agreement cannot tell" in res.warnings[0]
    bad = arts[corrupt_fp16]
    assert bad.fidelity.top1_agreement == 100.0  # agreement says "perfect"...
    assert bad.fidelity.cosine < 0.9 and bad.status == "degraded"  # ...the continuous metrics do not
    assert bad.error == f"cosine {bad.fidelity.cosine:.4f} < 0.99"
    assert arts["fp16"].status == "ok" and arts["fp16"].fidelity.cosine > 0.999
    assert res.manifest.recommended != corrupt_fp16 and res.manifest.min_cosine == 0.99
    assert load_manifest(res.manifest_path) == res.manifest


def test_the_cosine_bound_is_a_flag(tmp_path, corrupt_fp16):
    from converter.cli import convert

    model = one_class_model(tmp_path / "one_class.onnx")
    np.save(tmp_path / "d.npy", np.random.default_rng(2).standard_normal((32, 16)).astype(np.float32))
    (tmp_path / "r.json").write_text(json.dumps([corrupt_fp16]))
    args = [str(model), "--recipe", str(tmp_path / "r.json"), "--calib", str(tmp_path / "d.npy")]
    args += ["--val", str(tmp_path / "d.npy"), "--latency-budget", "0.05", "--latency-rounds", "2"]
    strict = CliRunner().invoke(convert, [*args, "--out", str(tmp_path / "a")])
    assert strict.exit_code == 0, strict.output
    assert "DEGRADED" in strict.output and "warning: the fp32 reference predicts class 0" in strict.output
    assert "continuous metrics: ok = cosine >= 0.99" in strict.output
    loose = CliRunner().invoke(convert, [*args, "--out", str(tmp_path / "b"), "--min-cosine", "0.5"])
    assert loose.exit_code == 0, loose.output
    assert load_manifest(tmp_path / "b").artifact(corrupt_fp16).status == "ok"


def test_a_dense_output_is_scored_by_cosine_and_relative_error_not_argmax(tmp_path, corrupt_fp16):
    model = dense_model(tmp_path / "dense.onnx")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 1, 8, 8)).astype(np.float32)
    res, arts, log = _convert(model, tmp_path, ["fp16", corrupt_fp16], x, y=rng.integers(0, 2, 32))
    assert (res.manifest.validation.output_kind, res.manifest.validation.fidelity_basis) == (
        "dense",
        "continuous",
    )
    assert "fidelity: dense outputs [1, 8, 8], judged on continuous metrics" in log and "warning" not in log
    for art in arts.values():  # labels given, but a map has no argmax and no accuracy
        f = art.fidelity
        assert f.top1_agreement is None and f.accuracy is None and f.accuracy_delta is None
        assert f.cosine is not None and f.relative_error is not None
    assert arts["fp16"].status == "ok" and arts["fp16"].fidelity.relative_error < 1e-3
    assert arts[corrupt_fp16].status == "degraded" and arts[corrupt_fp16].fidelity.cosine < 0.99


def test_output_kinds_and_reference_profiles():
    from converter.errors import ConvertError
    from converter.fidelity import FidelityBounds, output_kind, profile_reference

    assert output_kind(np.zeros((4, 10))) == "classification"
    assert output_kind(np.zeros((4, 1, 10))) == "classification"  # singleton dimensions ignored
    assert output_kind(np.zeros((4, 1))) == "dense"  # a regression
    assert output_kind(np.zeros((4, 21, 64, 64))) == "dense"  # a segmentation map
    assert output_kind(np.zeros((4, 128)), "dense") == "dense"  # an embedding, said so
    with pytest.raises(ConvertError, match="needs outputs of shape"):
        output_kind(np.zeros((4, 3, 8, 8)), "classification")
    bounds = FidelityBounds(max_accuracy_drop=1.0)
    logits = np.eye(10)[np.r_[np.zeros(99, int), [1]]]  # 99% class 0: a constant would fit 1 pt
    assert profile_reference(logits, None, bounds).basis == "continuous"
    logits = np.eye(10)[np.r_[np.zeros(98, int), [1, 2]]]  # 98%: a constant loses 2 pt, agreement can tell
    profile = profile_reference(logits, None, bounds)
    assert (profile.basis, profile.classes_seen, profile.warning) == ("top1", 3, None)
    assert profile_reference(logits, np.zeros(100, int), bounds).basis == "accuracy"
    assert profile_reference(logits, None, FidelityBounds(max_accuracy_drop=5.0)).basis == "continuous"


def test_judge_by_basis():
    from converter.fidelity import FidelityBounds, ReferenceProfile, judge

    bounds = FidelityBounds(max_accuracy_drop=1.0, min_cosine=0.99, max_relative_error=0.05)
    top1 = ReferenceProfile("classification", "top1", 10, 20.0)
    # classifiers: the logit cosine does not decide, the probability cosine does (never ok below 0.99)
    assert (
        judge(Fidelity(top1_agreement=99.5, cosine=0.5, probability_cosine=0.995), top1, bounds).miss is None
    )
    miss = judge(Fidelity(top1_agreement=98.0, cosine=1.0, probability_cosine=1.0), top1, bounds).miss
    assert "drop 2.00 pt > budget 1.0" in miss
    miss = judge(Fidelity(top1_agreement=100.0, cosine=0.999, probability_cosine=0.98), top1, bounds).miss
    assert miss == "probability cosine 0.9800 < 0.99"
    assert "probability cosine nan" in judge(Fidelity(top1_agreement=100.0), top1, bounds).miss
    cont = ReferenceProfile("dense", "continuous")
    assert judge(Fidelity(cosine=0.995, relative_error=0.01), cont, bounds).miss is None
    assert judge(Fidelity(cosine=0.98, relative_error=0.01), cont, bounds).miss == "cosine 0.9800 < 0.99"
    assert "relative error 0.1 > 0.05" in judge(Fidelity(cosine=0.999, relative_error=0.1), cont, bounds).miss
    assert judge(Fidelity(cosine=float("nan")), cont, bounds).miss.startswith("cosine nan")


# ---- no-op passes ----------------------------------------------------------------------------------
def test_dynamic_int8_on_a_model_without_matmul_is_a_no_op(tmp_path):
    model = no_matmul_model(tmp_path / "mul_relu.onnx")
    x = np.random.default_rng(4).standard_normal((16, 8)).astype(np.float32)
    res, arts, log = _convert(model, tmp_path, ["int8_dynamic"], x)
    art = arts["int8_dynamic"]
    assert art.status == "no-op" and "same ops and initializers as its input (fp32.onnx)" in art.error
    assert art.fidelity.cosine == 1.0 and art.size_bytes >= arts["fp32"].size_bytes  # bigger, same graph
    assert "the model has no MatMul/Gemm op to quantize" in log and "NO-OP" in log
    assert art.host_latency_ms is None and res.manifest.recommended == "fp32"


def test_no_op_rules(tmp_path):
    import onnx

    from converter.noop import unchanged_reason

    src = no_matmul_model(tmp_path / "a.onnx")
    resaved = onnx.load(str(src))
    resaved.producer_name, resaved.graph.node[0].name = "someone-else", "renamed"
    onnx.save(resaved, str(tmp_path / "b.onnx"))
    out = np.ones((2, 8))
    same = unchanged_reason(
        src, tmp_path / "b.onnx", start_outputs=out, outputs=out, claims_new_precision=False
    )
    assert same and "same ops and initializers" in same
    changed = dense_model(tmp_path / "c.onnx")  # another graph
    kw = {"start_outputs": out, "outputs": out.copy()}
    assert (
        unchanged_reason(src, changed, **kw, claims_new_precision=False) is None
    )  # a rewrite, same precision
    if changed.stat().st_size >= src.stat().st_size:
        assert "bit-identical" in unchanged_reason(src, changed, **kw, claims_new_precision=True)
    assert (
        unchanged_reason(src, changed, start_outputs=out, outputs=out + 1e-7, claims_new_precision=True)
        is None
    )


# ---- recommendation with uncertainty ---------------------------------------------------------------
def _art(name: str, ms: float, ci: tuple[float, float], size: int, passes: int = 1, status="ok"):
    return ManifestArtifact(
        name=name, file=f"{name}.onnx", sha256="0" * 64, size_bytes=size, gzip_bytes=size, format="onnx",
        passes=tuple(PassRecord("p") for _ in range(passes)), host_latency_ms=ms, host_latency_ci_ms=ci,
        status=status,
    )  # fmt: skip


def test_recommendation_tie_rule():
    from converter.recommend import compare, recommend, speedup_range

    fp32 = _art("fp32", 1.00, (0.95, 1.05), 1000, passes=0)
    looks_faster = _art("optimize", 0.97, (0.90, 1.02), 1000)  # 1.03x by its median, CI overlaps fp32
    assert compare(looks_faster, fp32) == "tie" and recommend([fp32, looks_faster]) == "fp32"  # simpler
    fp16 = _art("fp16", 1.01, (0.96, 1.07), 500)
    assert recommend([fp32, looks_faster, fp16]) == "fp16"  # a tie goes to the smaller file
    int8 = _art("int8", 0.50, (0.48, 0.53), 300)
    tflite = _art("tflite_int8", 0.49, (0.47, 0.52), 250)
    assert compare(int8, fp32) == "faster" and recommend([fp32, fp16, int8]) == "int8"
    assert recommend([fp32, int8, tflite]) == "tflite_int8"  # tied with the fastest, smaller
    broken = _art("broken", 0.10, (0.09, 0.11), 10, status="degraded")
    noop = _art("noop", 0.10, (0.09, 0.11), 10, status="no-op")
    assert recommend([fp32, int8, broken, noop]) == "int8"  # never a degraded or no-op artifact
    slow_small = _art("slow_small", 1.30, (1.20, 1.40), 100)
    assert recommend([fp32, slow_small]) == "fp32"  # smaller, but slower by its CI
    wide = _art("wide", 0.55, (0.20, 1.20), 200)  # ties the fastest and fp32: too uncertain to rank
    assert recommend([fp32, int8, wide]) == "wide"
    assert speedup_range(int8, fp32) == pytest.approx((2.0, 0.95 / 0.53, 1.05 / 0.48))
    assert recommend([]) is None and recommend([_art("fp32", 1.0, (1.0, 1.0), 9, 0, "degraded")]) is None


def test_median_ci_is_the_order_statistic_interval():
    from converter.evaluate import median_ci

    assert median_ci([5, 1, 4, 2, 3, 9, 8, 7, 6, 10]) == (2, 9, pytest.approx(1 - 22 / 1024))
    assert median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0, 0.75)  # too few rounds for 95%: the range, stated
    low, high, cov = median_ci(list(range(100)))
    assert 39 <= low < 50 < high <= 60 and 0.95 <= cov < 0.97


# ---- the shipped digits CNN ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_val():
    p = digits_paths()
    with np.load(p.val) as v:
        return v["x"], v["y"]


def test_digits_quick_recipe_table_shows_intervals_and_the_basis(tmp_path, digits_val):
    from converter.cli import convert

    x, y = digits_val
    np.savez(tmp_path / "d.npz", x=x[:128], y=y[:128])
    (tmp_path / "r.json").write_text(json.dumps(["optimize", "int8_dynamic", "int8_static"]))
    args = [
        str(digits_paths().onnx),
        "--recipe",
        str(tmp_path / "r.json"),
        "--calib",
        str(tmp_path / "d.npz"),
    ]
    args += ["--val", str(tmp_path / "d.npz"), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(convert, [*args, "--latency-budget", "0.2", "--latency-rounds", "6"])
    assert result.exit_code == 0, result.output
    manifest = load_manifest(tmp_path / "o")
    v = manifest.validation
    assert (v.output_kind, v.fidelity_basis, v.reference_classes) == ("classification", "accuracy", 10)
    assert "fidelity (classification outputs, 128 samples): accuracy on the labels: ok = at most 1.0 pt" in (
        result.output
    )
    for art in manifest.artifacts:
        assert art.status == "ok", (art.name, art.error)
        low, high = art.host_latency_ci_ms
        assert low <= art.host_latency_ms <= high
        assert f"{low:.3f}-{high:.3f}" in result.output
    assert manifest.recommended is not None and "coverage 96.9%" in result.output  # 6 rounds: the range


def test_digits_on_one_class_of_samples_is_judged_on_continuous_fidelity(tmp_path, digits_val):
    """Validation data of a single digit: the reference predicts one class, agreement is meaningless."""
    from converter.data import load_dataset, onnx_input_specs
    from converter.evaluate import reference_outputs

    x, _ = digits_val
    onnx_path = digits_paths().onnx
    np.save(tmp_path / "all.npy", x)
    predicted = reference_outputs(onnx_path, load_dataset(tmp_path / "all.npy", onnx_input_specs(onnx_path)))
    threes = x[predicted.argmax(1) == 3][:48]
    res, arts, log = _convert(onnx_path, tmp_path, ["fp16", "int8_static"], threes, y=np.full(len(threes), 3))
    assert res.manifest.validation.fidelity_basis == "continuous" and "warning: the fp32 reference" in log
    for art in arts.values():
        assert art.fidelity.top1_agreement is not None  # still shown, not used
        within = art.fidelity.cosine >= 0.99
        assert art.status == ("ok" if within else "degraded"), (art.name, art.fidelity.cosine)


def test_probability_cosine_softmaxes_scores_and_keeps_distributions():
    from converter.fidelity import fidelity, probabilities

    rng = np.random.default_rng(7)
    logits = rng.standard_normal((200, 10)) * 4
    probs = probabilities(logits)
    assert np.allclose(probs.sum(1), 1.0) and np.all(probs >= 0)
    assert np.array_equal(probabilities(probs), probs)  # already a distribution: kept as is
    # noise on the small logits (what int8 does) moves the logit cosine, hardly the probabilities
    noisy = logits + rng.standard_normal(logits.shape) * 0.5 * (logits < 0)
    fid = fidelity(logits, noisy, None, "classification")
    assert fid.probability_cosine > fid.cosine
    assert fidelity(logits, logits, None, "classification").probability_cosine == 1.0
    assert fidelity(logits[:, :1], logits[:, :1], None, "dense").probability_cosine is None


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 20),
    st.integers(2, 12),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
)
def test_probabilities_are_finite_distributions_for_any_scores(n, classes, scale):
    from converter.fidelity import probabilities

    scores = np.random.default_rng(n * classes).standard_normal((n, classes)) * scale
    probs = probabilities(scores)
    assert np.all(np.isfinite(probs)) and np.allclose(probs.sum(1), 1.0)
