"""ONNX graph optimization (ORT offline) and fp16 conversion."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from converter.errors import ConvertError
from converter.passes import Context, Model, Output, param, register


@dataclass(frozen=True)
class OptimizeParams:
    level: Literal["basic", "extended", "all"] = param(
        "extended",
        "ORT graph optimization level saved offline; 'basic' is portable everywhere, 'extended' adds "
        "ORT-contrib fusions any CPU build runs, 'all' adds layout changes tied to this host's CPU",
    )


@register(
    "optimize", OptimizeParams, "ONNX Runtime offline graph optimization (constant folding, fusions), saved"
)
def optimize(ctx: Context, base: Model, p: OptimizeParams, out_name: str) -> Output:
    import onnxruntime as ort

    out = ctx.out_dir / f"{out_name}.onnx"
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[p.level]
    opts.optimized_model_filepath = str(out)
    ort.InferenceSession(str(base.onnx), opts, providers=["CPUExecutionProvider"])
    if not out.exists():
        raise ConvertError("onnxruntime did not write the optimized model")
    return Output(out, "onnx", "fp32")


@dataclass(frozen=True)
class Fp16Params:
    keep_io_types: bool = param(True, "keep float32 inputs/outputs (casts inside), so callers feed float32")
    op_block_list: str = param("", "comma-separated op types to keep in float32")


@register("fp16", Fp16Params, "float16 weights and compute (half the file; on CPUs not faster)", ("onnx",))
def fp16(ctx: Context, base: Model, p: Fp16Params, out_name: str) -> Output:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(base.onnx))
    block = list(DEFAULT_OP_BLOCK_LIST) + [s.strip() for s in p.op_block_list.split(",") if s.strip()]
    converted = convert_float_to_float16(model, keep_io_types=p.keep_io_types, op_block_list=block)
    out = ctx.out_dir / f"{out_name}.onnx"
    onnx.save(converted, str(out))
    return Output(out, "onnx", "fp16")


def copy_model(src: Path, dst: Path) -> Path:
    """Save a single-file copy of an ONNX model (external data folded in)."""
    import onnx

    onnx.save(onnx.load(str(src)), str(dst))
    return dst


__all__ = ["Path", "copy_model"]
