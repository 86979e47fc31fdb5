"""ONNX int8: dynamic (MatMul/Gemm by default) and static QDQ with calibration and an accuracy-aware fallback.

Measured on this kind of host: ``quantize_dynamic`` on convolutions gives ConvInteger graphs 8-17x *slower*
than fp32 (ResNet-18 162 ms vs 20.5 ms), so the dynamic pass refuses Conv unless ``allow_conv`` is set, and
then says so. Static int8 runs ``quant_pre_process`` (shape inference + optimization), then
``quantize_static`` (QDQ, per-channel weights, uint8 activations / int8 weights) with MinMax, Entropy or
Percentile calibration on the calibration data. When the artifact misses the fidelity bounds (the accuracy
budget, or cosine/relative error when fidelity is continuous: :mod:`converter.fidelity`), the fallback
ranks the quantized nodes by how much error each one *adds* (relative L2 error of its output minus the worst
error among its inputs, fp32 vs QDQ, on a few validation samples), keeps the 1, 2, 4, ... worst in float
and quantizes again, until it fits or ``max_float_nodes`` is reached. A model without any of the dynamic
pass's op types comes out unchanged, which the converter records as ``no-op``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from converter.errors import ConvertError
from converter.passes import Context, Model, Output, onnx_op_types, param, register

QUANT_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


@dataclass(frozen=True)
class DynamicParams:
    op_types: str = param("MatMul,Gemm", "comma-separated op types to quantize")
    per_channel: bool = param(False, "per-channel weight scales")
    allow_conv: bool = param(
        False, "also quantize Conv (ConvInteger: measured 8-17x slower than fp32 on CPUs; refused unless set)"
    )


@register(
    "int8_dynamic", DynamicParams, "ONNX dynamic int8 (weights int8, activations at run time)", ("onnx",)
)
def int8_dynamic(ctx: Context, base: Model, p: DynamicParams, out_name: str) -> Output:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = [s.strip() for s in p.op_types.split(",") if s.strip()]
    present = onnx_op_types(base.onnx)
    notes: list[str] = []
    if "Conv" in ops and not p.allow_conv:
        raise ConvertError(
            "int8_dynamic on Conv makes ConvInteger graphs 8-17x slower than fp32; "
            "use int8_static for CNNs (or set allow_conv=true to build it anyway)"
        )
    if "Conv" in ops:
        notes.append("warning: dynamic int8 Conv (ConvInteger) is usually much slower than fp32 on CPUs")
    targets = sorted(set(ops) & present)
    if not targets:  # quantize_dynamic leaves it as it is: the converter records a no-op
        notes.append(f"the model has no {'/'.join(ops)} op to quantize")
    elif "Conv" in present and "Conv" not in ops:
        notes.append("convolutions left in float (dynamic int8 only on " + "/".join(targets) + ")")
    out = ctx.out_dir / f"{out_name}.onnx"
    clean = _without_value_info(base.onnx, ctx.work_dir / f"{out_name}.in.onnx")
    quantize_dynamic(
        str(clean),
        str(out),
        op_types_to_quantize=ops,
        per_channel=p.per_channel,
        weight_type=QuantType.QInt8,
    )
    return Output(out, "onnx", "int8-dynamic", notes=tuple(notes))


@dataclass(frozen=True)
class StaticParams:
    calibration: Literal["MinMax", "Entropy", "Percentile"] = param("MinMax", "calibration method")
    per_channel: bool = param(True, "per-channel weight scales")
    format: Literal["QDQ", "QOperator"] = param("QDQ", "quantized graph format")
    max_samples: int = param(128, "calibration samples used at most")
    fallback: bool = param(True, "keep the most sensitive nodes in float when the drop exceeds the budget")
    max_float_nodes: int = param(8, "fallback: most nodes kept in float")


class _Reader:
    def __init__(self, data, n: int):
        self._batches = iter(list(data.take(n).batches(1)))

    def get_next(self):
        return next(self._batches, None)

    def rewind(self):  # pragma: no cover - used by some ORT versions
        pass


def _without_value_info(src: Path, dst: Path) -> Path:
    """A copy without intermediate shape annotations (stale ones from some exporters break quantization)."""
    import onnx

    model = onnx.load(str(src))
    del model.graph.value_info[:]
    onnx.save(model, str(dst))
    return dst


def _preprocess(src: Path, dst: Path, log) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    except Exception as exc:  # symbolic shape inference fails on some graphs: fall back to ONNX's
        log(f"    quant_pre_process with symbolic shapes failed ({str(exc)[:80]}); retrying without")
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    return _name_nodes(dst)


def _name_nodes(path: Path) -> Path:
    import onnx

    model = onnx.load(str(path))
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    onnx.save(model, str(path))
    return path


def _quantize(pre: Path, out: Path, ctx: Context, p: StaticParams, exclude: list[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(pre),
        str(out),
        _Reader(ctx.calib, p.max_samples),
        quant_format=QuantFormat.QDQ if p.format == "QDQ" else QuantFormat.QOperator,
        per_channel=p.per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, p.calibration),
        nodes_to_exclude=exclude,
        extra_options={"CalibMaxIntermediateOutputs": 64} if p.calibration != "MinMax" else {},
    )


def sensitive_nodes(fp32: Path, quant: Path, data, n: int = 16) -> list[tuple[str, float]]:
    """Quantizable nodes by the relative error they add (largest first)."""
    import onnx

    from converter.data import ort_session

    model = onnx.load(str(fp32))
    nodes = [nd for nd in model.graph.node if nd.op_type in QUANT_OPS]
    producer = {o: nd for nd in model.graph.node for o in nd.output}
    tensors = sorted({nd.output[0] for nd in nodes} | {i for nd in nodes for i in nd.input[:1]})
    outs = {}
    for path in (fp32, quant):
        m = onnx.load(str(path))
        have = {o.name for o in m.graph.output}
        known = {o for nd in m.graph.node for o in nd.output}
        for t in tensors:
            if t in known and t not in have:
                m.graph.output.append(onnx.ValueInfoProto(name=t))
        tmp = path.with_suffix(".debug.onnx")
        onnx.save(m, str(tmp))
        sess = ort_session(tmp)
        names = [o.name for o in sess.get_outputs()]
        feed = {k: v[:n] for k, v in data.inputs.items()}
        outs[path] = dict(zip(names, sess.run(None, feed), strict=False))
        del sess
        tmp.unlink()

    def rel(t: str) -> float:
        a, b = outs[fp32].get(t), outs[quant].get(t)
        if a is None or b is None:
            return 0.0
        return float(np.linalg.norm(a - b) / (np.linalg.norm(a) + 1e-12))

    ranked = []
    for nd in nodes:
        upstream = [rel(i) for i in nd.input[:1] if i in producer]
        ranked.append((nd.name, rel(nd.output[0]) - max(upstream, default=0.0)))
    return sorted(ranked, key=lambda kv: -kv[1])


@register(
    "int8_static",
    StaticParams,
    "ONNX static int8 (QDQ, per-channel, calibrated) with accuracy-aware float fallback",
    ("onnx",),
)
def int8_static(ctx: Context, base: Model, p: StaticParams, out_name: str) -> Output:
    pre = ctx.work_dir / f"{out_name}.pre.onnx"
    out = ctx.out_dir / f"{out_name}.onnx"
    _preprocess(base.onnx, pre, ctx.log)
    _quantize(pre, out, ctx, p, [])
    notes: list[str] = []
    if not (p.fallback and ctx.evaluate):
        return Output(out, "onnx", "int8-static")
    verdict = ctx.evaluate(out)
    if verdict.miss is None:
        return Output(out, "onnx", "int8-static", notes=(f"{verdict.summary}: within the fidelity bounds",))
    ranked = [name for name, _ in sensitive_nodes(pre, out, ctx.val)]
    k = 1
    while verdict.miss is not None and k <= min(p.max_float_nodes, len(ranked)):
        exclude = ranked[:k]
        ctx.log(f"    {verdict.miss}: keeping {k} node(s) in float: {exclude}")
        _quantize(pre, out, ctx, p, exclude)
        verdict = ctx.evaluate(out)
        notes = [f"float fallback for {k} node(s): {', '.join(exclude)}; {verdict.summary}"]
        k *= 2
    if verdict.miss is not None:
        notes.append(f"still outside the fidelity bounds after the fallback: {verdict.miss}")
    return Output(out, "onnx", "int8-static", notes=tuple(notes))
