"""TFLite artifacts: fp32, fp16, dynamic-range int8 and full int8 (calibrated).

From a PyTorch source (what CI tests): ``litert-torch`` converts the module to a float32 .tflite without
TensorFlow (batch 1, NCHW input like the ONNX model), then ``ai-edge-quantizer`` (installed with it) makes
fp16 (float casting of weights), dynamic-range int8 (``dynamic_wi8_afp32``) and full int8
(``static_wi8_ai8``, calibrated on the calibration data through LiteRT; int8 activations and weights, the
model's input/output become int8 with their scale/zero point — edgebench's LiteRT runner quantizes inputs
itself). ``method="pt2e"`` uses litert-torch's PT2E quantizer instead (float I/O, per-channel).

From an ONNX-only source: onnx2tf + tensorflow-cpu, which pin old versions and take minutes, so they are
never a dependency and CI does not need them. Point ``EDGEBENCH_ONNX2TF_PYTHON`` at the python of a venv
that has them (``python -m venv /opt/onnx2tf && /opt/onnx2tf/bin/pip install tensorflow-cpu && pip install
--no-deps onnx2tf`` plus its small deps), or install them here; the pass then runs onnx2tf in a subprocess
on a *copy* of the model (it overwrites its input), with local calibration data (``-cind``, else it
downloads a sample from the internet) and NCHW input kept (``-kat``). Without it, the pass fails with that
instruction and the other passes continue.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from converter.errors import ConvertError
from converter.passes import Context, Model, Output, param, register

ONNX2TF_ENV = "EDGEBENCH_ONNX2TF_PYTHON"


@dataclass(frozen=True)
class NoParams:
    pass


@dataclass(frozen=True)
class FullInt8Params:
    method: Literal["aeq", "pt2e"] = param(
        "aeq", "ai-edge-quantizer static int8 (int8 I/O) or litert-torch PT2E"
    )
    max_samples: int = param(64, "calibration samples used at most")


def _sample(ctx: Context) -> np.ndarray:
    if len(ctx.calib.inputs) != 1:
        raise ConvertError("TFLite passes support single-input models only")
    return next(iter(ctx.calib.inputs.values()))


def _fp32_tflite(ctx: Context, base: Model) -> Path:
    """The float32 .tflite of this base (converted once per run and cached in the work directory)."""
    cached = ctx.work_dir / f"{base.label}.fp32.tflite"
    if cached.exists():
        return cached
    if base.torch is None:
        return _onnx2tf(ctx, base)["float32"]
    import litert_torch
    import torch

    x = torch.from_numpy(np.ascontiguousarray(_sample(ctx)[:1]))
    try:
        litert_torch.convert(base.torch.eval(), (x,)).export(str(cached))
    except Exception as exc:
        raise ConvertError(f"litert-torch cannot convert the model: {_first_line(exc)}") from None
    return cached


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _aeq(src: Path, recipe, out: Path, calibration=None) -> Path:
    from ai_edge_quantizer import quantizer

    qt = quantizer.Quantizer(str(src))
    qt.load_quantization_recipe(recipe)
    result = None
    if calibration is not None:
        result = qt.calibrate(calibration)
    try:
        qt.quantize(result).export_model(str(out), overwrite=True)
    except Exception as exc:
        raise ConvertError(f"ai-edge-quantizer failed: {_first_line(exc)}") from None
    return out


FP16_RECIPE = [
    {
        "regex": ".*",
        "operation": "*",
        "algorithm_key": "float_casting",
        "op_config": {
            "weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT"},
            "compute_precision": "FLOAT",
            "explicit_dequantize": True,
            "skip_checks": False,
            "min_weight_elements": 0,
        },
    }
]


@register(
    "tflite_fp32", NoParams, "TFLite float32 (litert-torch, or onnx2tf for ONNX sources)", ("litert_torch",)
)
def tflite_fp32(ctx: Context, base: Model, p: NoParams, out_name: str) -> Output:
    out = ctx.out_dir / f"{out_name}.tflite"
    shutil.copyfile(_fp32_tflite(ctx, base), out)
    return Output(out, "tflite", "fp32")


@register(
    "tflite_fp16", NoParams, "TFLite float16 weights (ai-edge-quantizer float casting)", ("litert_torch",)
)
def tflite_fp16(ctx: Context, base: Model, p: NoParams, out_name: str) -> Output:
    out = ctx.out_dir / f"{out_name}.tflite"
    if base.torch is None:
        shutil.copyfile(_onnx2tf(ctx, base)["float16"], out)
    else:
        _aeq(_fp32_tflite(ctx, base), FP16_RECIPE, out)
    return Output(out, "tflite", "fp16")


@register(
    "tflite_int8_dynamic",
    NoParams,
    "TFLite dynamic-range int8 (int8 weights, float activations)",
    ("litert_torch",),
)
def tflite_int8_dynamic(ctx: Context, base: Model, p: NoParams, out_name: str) -> Output:
    out = ctx.out_dir / f"{out_name}.tflite"
    if base.torch is None:
        shutil.copyfile(_onnx2tf(ctx, base)["dynamic_range_quant"], out)
    else:
        from ai_edge_quantizer import recipe

        _aeq(_fp32_tflite(ctx, base), recipe.dynamic_wi8_afp32(), out)
    return Output(out, "tflite", "int8-dynamic")


@register(
    "tflite_int8", FullInt8Params, "TFLite full int8, calibrated on the calibration data", ("litert_torch",)
)
def tflite_int8(ctx: Context, base: Model, p: FullInt8Params, out_name: str) -> Output:
    out = ctx.out_dir / f"{out_name}.tflite"
    x = _sample(ctx)[: p.max_samples]
    if base.torch is None:
        shutil.copyfile(_onnx2tf(ctx, base)["full_integer_quant"], out)
        return Output(out, "tflite", "int8-full")
    if p.method == "pt2e":
        return Output(_pt2e(base.torch, x, out), "tflite", "int8-full")
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import recipe

    fp32 = _fp32_tflite(ctx, base)
    sigs = Interpreter(model_path=str(fp32)).get_signature_list()
    key = next(iter(sigs))
    name = sigs[key]["inputs"][0]
    calibration = {key: [{name: x[i : i + 1]} for i in range(len(x))]}
    _aeq(fp32, recipe.static_wi8_ai8(), out, calibration)
    return Output(out, "tflite", "int8-full")


def _pt2e(module, x: np.ndarray, out: Path) -> Path:
    import litert_torch
    import torch
    from litert_torch.quantize import pt2e_quantizer, quant_config
    from torchao.quantization.pt2e import quantize_pt2e

    sample = (torch.from_numpy(np.ascontiguousarray(x[:1])),)
    try:
        exported = torch.export.export(module.eval(), sample).module()
        quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
            pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
        )
        prepared = quantize_pt2e.prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for i in range(len(x)):
                prepared(torch.from_numpy(np.ascontiguousarray(x[i : i + 1])))
        converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
        litert_torch.convert(
            converted, sample, quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer)
        ).export(str(out))
    except ConvertError:
        raise
    except Exception as exc:
        raise ConvertError(f"PT2E int8 conversion failed: {_first_line(exc)}") from None
    return out


# ---- ONNX-only sources: onnx2tf in a separate interpreter ---------------------------------------------
def _onnx2tf_python() -> str:
    env = os.environ.get(ONNX2TF_ENV)
    if env:
        return env
    if importlib.util.find_spec("onnx2tf") and importlib.util.find_spec("tensorflow"):
        return sys.executable
    raise ConvertError(
        "TFLite from an ONNX-only source needs onnx2tf + tensorflow-cpu (not installed; heavy): set "
        f"{ONNX2TF_ENV} to a venv's python that has them, or give a PyTorch source (package.module:factory)"
    )


def _onnx2tf(ctx: Context, base: Model) -> dict[str, Path]:
    """Run onnx2tf once per base; returns its variants by onnx2tf's suffix."""
    out_dir = ctx.work_dir / f"onnx2tf-{base.label}"
    stem = "model"
    found = {
        kind: out_dir / f"{stem}_{kind}.tflite"
        for kind in ("float32", "float16", "dynamic_range_quant", "full_integer_quant")
    }
    if all(p.exists() for p in found.values()):
        return found
    python = _onnx2tf_python()
    out_dir.mkdir(parents=True, exist_ok=True)
    copy = out_dir / f"{stem}.onnx"  # onnx2tf overwrites its input: give it a copy
    shutil.copyfile(base.onnx, copy)
    name = next(iter(ctx.calib.inputs))
    x = _sample(ctx)[:64]
    calib = out_dir / "calib.npy"
    nhwc = x.transpose(0, 2, 3, 1) if x.ndim == 4 else x  # onnx2tf expects NHWC calibration data
    np.save(calib, nhwc.astype(np.float32))
    channels = nhwc.shape[-1]
    cmd = [
        python,
        "-m",
        "onnx2tf",
        "-i",
        str(copy),
        "-o",
        str(out_dir),
        "-b",
        "1",
        "-oiqt",
        "-kat",
        name,
        "-cind",
        name,
        str(calib),
        str([0.0] * channels),
        str([1.0] * channels),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=out_dir)
    except subprocess.TimeoutExpired:
        raise ConvertError("onnx2tf took more than an hour; stopped") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ConvertError(f"onnx2tf failed: {tail[0][:300]}")
    missing = [k for k, p in found.items() if not p.exists()]
    if missing:
        raise ConvertError(f"onnx2tf did not produce {missing}")
    return found
