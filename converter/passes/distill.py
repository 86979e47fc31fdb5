"""Knowledge distillation: a PyTorch student trained on the teacher's soft outputs (temperature T, weight
alpha), from an ONNX or PyTorch teacher (the teacher's outputs always come from its fp32 ONNX via ORT).

The student is ``student`` (``package.module:factory``) when given, else a channel-pruned copy of the
PyTorch source (``student_ratio`` of channels removed) — pruning + distillation, the course's recipe for a
smaller model that keeps its accuracy. Training data: the calibration set (its labels, when present, give
the hard-label term).
"""

from __future__ import annotations

from dataclasses import dataclass

from converter.errors import ConvertError
from converter.passes import Context, Model, Output, param, register
from converter.passes.prune import channel_prune, n_params
from converter.passes.training import teacher_logits, train


@dataclass(frozen=True)
class DistillParams:
    student: str = param("", "student factory package.module:factory (default: channel-pruned source)")
    student_ratio: float = param(0.5, "channels removed from the source to make the default student")
    temperature: float = param(4.0, "softmax temperature T")
    alpha: float = param(0.7, "weight of the soft (teacher) loss; 1 - alpha on the labels")
    epochs: int = param(8, "training epochs")
    lr: float = param(1e-3, "learning rate")


@register("distill", DistillParams, "knowledge distillation into a smaller PyTorch student", ("torch",))
def distill(ctx: Context, base: Model, p: DistillParams, out_name: str) -> Output:
    from converter.pytorch import export_onnx, load_factory

    sample = next(iter(ctx.calib.inputs.values()))
    if p.student:
        student = load_factory(p.student)
    elif base.torch is not None:
        student = channel_prune(base.torch, sample, p.student_ratio)
    else:
        raise ConvertError(
            "distill: give a student (student=package.module:factory) for an ONNX-only teacher"
        )
    teacher = teacher_logits(base.onnx, ctx.calib)
    train(
        student,
        ctx.calib,
        teacher=teacher,
        epochs=p.epochs,
        lr=p.lr,
        temperature=p.temperature,
        alpha=p.alpha,
    )
    out = ctx.out_dir / f"{out_name}.onnx"
    export_onnx(student, sample, out)
    notes = (
        f"student {n_params(student)} parameters, T={p.temperature}, alpha={p.alpha}, {p.epochs} epochs",
    )
    return Output(out, "onnx", "fp32", Model(out, student, out_name), notes=notes)
