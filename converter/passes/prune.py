"""Pruning: unstructured magnitude (sparser, not smaller on disk unless gzipped) and structured channel
pruning with torch-pruning (channels really removed: smaller and faster).

Measured on the digits CNN: unstructured 50% sparsity falls to ~81% accuracy before fine-tuning and
recovers after a few epochs, so fine-tuning runs by default when the source is PyTorch (on the calibration
data: cross-entropy on its labels plus distillation from the fp32 reference's outputs).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from converter.errors import ConvertError
from converter.passes import Context, Model, Output, need_torch, param, register
from converter.passes.training import last_linear, prunable_layers, teacher_logits, train


@dataclass(frozen=True)
class MagnitudeParams:
    sparsity: float = param(0.5, "fraction of weights zeroed in every Conv/Linear (Gemm/MatMul) layer")
    fine_tune_epochs: int = param(3, "epochs of fine-tuning after pruning (PyTorch source only; 0 = none)")
    lr: float = param(5e-4, "fine-tuning learning rate")


def _sparsity_report(weights: list[np.ndarray]) -> str:
    total = sum(w.size for w in weights)
    zeros = sum(int(np.sum(w == 0)) for w in weights)
    return f"sparsity {zeros / max(total, 1) * 100:.1f}% of {total} weights in {len(weights)} layers"


@register("prune_magnitude", MagnitudeParams, "unstructured magnitude pruning (+ fine-tuning from PyTorch)")
def prune_magnitude(ctx: Context, base: Model, p: MagnitudeParams, out_name: str) -> Output:
    if not 0 < p.sparsity < 1:
        raise ConvertError("prune_magnitude: sparsity must be between 0 and 1")
    out = ctx.out_dir / f"{out_name}.onnx"
    if base.torch is None:  # ONNX only: zero the smallest weights of each Conv/Gemm/MatMul initializer
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(base.onnx))
        inits = {i.name: i for i in model.graph.initializer}
        weights = []
        for node in model.graph.node:
            if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in inits:
                init = inits[node.input[1]]
                w = numpy_helper.to_array(init).copy()
                cut = np.quantile(np.abs(w), p.sparsity)
                w[np.abs(w) <= cut] = 0
                init.CopyFrom(numpy_helper.from_array(w, init.name))
                weights.append(w)
        if not weights:
            raise ConvertError("prune_magnitude: no Conv/Gemm/MatMul weights to prune")
        onnx.save(model, str(out))
        return Output(out, "onnx", "fp32", notes=(_sparsity_report(weights), "no fine-tuning (ONNX source)"))

    import torch
    from torch.nn.utils import prune

    from converter.pytorch import export_onnx

    model = copy.deepcopy(need_torch(ctx, base, "prune_magnitude"))
    layers = prunable_layers(model)
    for _, m in layers:
        prune.l1_unstructured(m, "weight", amount=p.sparsity)
    notes = []
    if p.fine_tune_epochs > 0:
        teacher = teacher_logits(base.onnx, ctx.calib)
        train(model, ctx.calib, teacher=teacher, epochs=p.fine_tune_epochs, lr=p.lr)
        notes.append(f"fine-tuned {p.fine_tune_epochs} epochs on {ctx.calib.n} calibration samples")
    for _, m in layers:
        prune.remove(m, "weight")
    model.eval()
    with torch.no_grad():
        weights = [m.weight.detach().numpy() for _, m in layers]
    sample = next(iter(ctx.calib.inputs.values()))
    export_onnx(model, sample, out)
    return Output(out, "onnx", "fp32", Model(out, model, out_name), notes=(_sparsity_report(weights), *notes))


@dataclass(frozen=True)
class ChannelParams:
    ratio: float = param(0.5, "fraction of channels removed per layer (torch-pruning, L2 magnitude)")
    fine_tune_epochs: int = param(5, "epochs of fine-tuning after pruning (0 = none)")
    lr: float = param(1e-3, "fine-tuning learning rate")


def channel_prune(model, sample: np.ndarray, ratio: float):
    """A copy of ``model`` with ``ratio`` of the channels of every prunable layer removed."""
    import torch
    import torch_pruning as tp

    model = copy.deepcopy(model).eval()
    example = torch.from_numpy(np.ascontiguousarray(sample[:1]))
    ignored = [m for m in [last_linear(model)] if m is not None]
    try:
        pruner = tp.pruner.MetaPruner(
            model,
            example,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=ignored,
        )
        pruner.step()
    except Exception as exc:
        raise ConvertError(
            f"torch-pruning cannot prune this model: {str(exc).splitlines()[0][:200]}"
        ) from None
    return model


def n_params(model) -> int:
    return sum(int(p.numel()) for p in model.parameters())


@register(
    "prune_channels",
    ChannelParams,
    "structured channel pruning (torch-pruning): channels removed, + fine-tuning",
    ("torch", "torch_pruning"),
)
def prune_channels(ctx: Context, base: Model, p: ChannelParams, out_name: str) -> Output:
    from converter.pytorch import export_onnx

    if not 0 < p.ratio < 1:
        raise ConvertError("prune_channels: ratio must be between 0 and 1")
    src = need_torch(ctx, base, "prune_channels")
    sample = next(iter(ctx.calib.inputs.values()))
    before = n_params(src)
    model = channel_prune(src, sample, p.ratio)
    notes = [f"parameters {before} -> {n_params(model)} ({n_params(model) / before * 100:.0f}%)"]
    if p.fine_tune_epochs > 0:
        train(
            model, ctx.calib, teacher=teacher_logits(base.onnx, ctx.calib), epochs=p.fine_tune_epochs, lr=p.lr
        )
        notes.append(f"fine-tuned {p.fine_tune_epochs} epochs on {ctx.calib.n} calibration samples")
    out = ctx.out_dir / f"{out_name}.onnx"
    export_onnx(model, sample, out)
    return Output(out, "onnx", "fp32", Model(out, model, out_name), notes=tuple(notes))
