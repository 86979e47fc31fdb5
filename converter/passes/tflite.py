"""TFLite artifacts: fp32, fp16, dynamic-range int8 and full int8 (calibrated).

From a PyTorch source (what CI tests): ``litert-torch`` converts the module to a float32 .tflite without
TensorFlow (batch 1, NCHW input like the ONNX model), then ``ai-edge-quantizer`` (installed with it) makes
fp16 (float casting of weights), dynamic-range int8 (``dynamic_wi8_afp32``) and full int8
(``static_wi8_ai8``, calibrated on the calibration data through LiteRT; int8 activations and weights, the
model's input/output become int8 with their scale/zero point — edgebench's LiteRT runner quantizes inputs
itself). ``method="pt2e"`` uses litert-torch's PT2E quantizer instead (float I/O, per-channel).

From an ONNX-only source: onnx2tf + tensorflow-cpu in a *separate* interpreter, so TensorFlow never enters
edgebench's environment and CI does not need it. ``deploy/make-onnx2tf-env.sh`` builds that venv
(tensorflow-cpu 2.21 + onnx2tf 1.29.24 installed ``--no-deps``) and prints the line to export:
``EDGEBENCH_ONNX2TF_PYTHON=/opt/edgebench-onnx2tf/bin/python``. onnx2tf then runs once per base model in a
subprocess on a *copy* of the model (it overwrites its input), with the NCHW input kept (``-kat``, so the
artifacts take the same data as the ONNX model) and full int8 calibrated on the calibration data
(``-cind``; without it onnx2tf would download sample images). fp32, fp16 and full int8 (the default
``method="auto"`` for ONNX sources) are onnx2tf's files; dynamic-range int8 is ai-edge-quantizer's
``dynamic_wi8_afp32`` on onnx2tf's fp32 (onnx2tf's own one has no signature). Measured on the digits CNN:
onnx2tf ~8-12 s; every variant within 0.0 pt of fp32. Without the venv the TFLite steps fail with that
instruction and the other passes continue.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from converter.errors import ConvertError, describe_failure
from converter.passes import Context, Model, Output, need_torch, param, register

ONNX2TF_ENV = "EDGEBENCH_ONNX2TF_PYTHON"


@dataclass(frozen=True)
class NoParams:
    pass


@dataclass(frozen=True)
class FullInt8Params:
    method: Literal["auto", "aeq", "pt2e", "onnx2tf"] = param(
        "auto",
        "auto (aeq for PyTorch sources, onnx2tf for ONNX-only ones), ai-edge-quantizer static int8 "
        "(int8 I/O), litert-torch PT2E (PyTorch sources) or onnx2tf's calibrated TFLiteConverter int8 "
        "(ONNX-only sources; int8 I/O, per-channel)",
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
        return _onnx2tf(ctx, base, "float32")
    import litert_torch
    import torch

    x = torch.from_numpy(np.ascontiguousarray(_sample(ctx)[:1]))
    try:
        litert_torch.convert(base.torch.eval(), (x,)).export(str(cached))
    except Exception as exc:
        raise ConvertError(describe_failure("litert-torch cannot convert the model to TFLite", exc)) from None
    return cached


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
        raise ConvertError(describe_failure("ai-edge-quantizer failed", exc)) from None
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
        shutil.copyfile(_onnx2tf(ctx, base, "float16"), out)
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
    from ai_edge_quantizer import recipe

    # also for ONNX sources: onnx2tf's own dynamic-range file has no signature (LiteRT's runner needs one)
    out = ctx.out_dir / f"{out_name}.tflite"
    _aeq(_fp32_tflite(ctx, base), recipe.dynamic_wi8_afp32(), out)
    return Output(out, "tflite", "int8-dynamic")


@register(
    "tflite_int8", FullInt8Params, "TFLite full int8, calibrated on the calibration data", ("litert_torch",)
)
def tflite_int8(ctx: Context, base: Model, p: FullInt8Params, out_name: str) -> Output:
    out = ctx.out_dir / f"{out_name}.tflite"
    x = _sample(ctx)[: p.max_samples]
    method = p.method if p.method != "auto" else ("aeq" if base.torch is not None else "onnx2tf")
    if method == "onnx2tf":
        if base.torch is not None:
            raise ConvertError("method 'onnx2tf' is for ONNX-only sources (this one is PyTorch)")
        shutil.copyfile(_onnx2tf(ctx, base, "full_integer_quant"), out)
        return Output(out, "tflite", "int8-full")
    if method == "pt2e":
        module = need_torch(ctx, base, "tflite_int8 (method pt2e)")
        return Output(_pt2e(module, x, out), "tflite", "int8-full")
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
        raise ConvertError(describe_failure("PT2E int8 conversion failed", exc)) from None
    return out


# ---- ONNX-only sources: onnx2tf in a separate interpreter ---------------------------------------------
ONNX2TF_KINDS = ("float32", "float16", "full_integer_quant")  # the onnx2tf outputs edgebench uses
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _onnx2tf_python() -> str:
    env = os.environ.get(ONNX2TF_ENV)
    if env:
        if not (Path(env).is_file() and os.access(env, os.X_OK)):
            raise ConvertError(f"{ONNX2TF_ENV}={env} is not an executable (deploy/make-onnx2tf-env.sh)")
        return env
    if importlib.util.find_spec("onnx2tf") and importlib.util.find_spec("tensorflow"):
        return sys.executable
    raise ConvertError(
        "TFLite from an ONNX-only source needs onnx2tf + tensorflow-cpu (not installed; heavy): run "
        f"deploy/make-onnx2tf-env.sh and set {ONNX2TF_ENV} to the python it prints, or give a PyTorch "
        "source (package.module:factory)"
    )


def _find(out_dir: Path, kind: str) -> Path | None:
    """onnx2tf's ``<stem>_<kind>.tflite`` (the stem and some suffixes changed between versions)."""
    hits = sorted(out_dir.glob(f"*_{kind}.tflite"))
    return hits[0] if len(hits) == 1 else None


def _onnx2tf_error(log: str) -> str:
    lines = [_ANSI.sub("", line).strip() for line in log.splitlines()]
    lines = [line for line in lines if line]
    errors = [line for line in lines if "ERROR" in line or "Error" in line]
    return ((errors or lines or ["no output"])[-1])[:300]


def _onnx2tf(ctx: Context, base: Model, kind: str) -> Path:
    """Run onnx2tf once per base (float32, float16 and calibrated full int8) and return one output.

    onnx2tf overwrites its input, so it gets a copy; the ONNX input layout (NCHW) is kept (``-kat``) so the
    artifacts take the same data as the ONNX model; full int8 is calibrated on ``ctx.calib`` (``-cind``,
    already normalized: mean 0, std 1), never on the sample images onnx2tf would download otherwise.
    A failure is remembered, so the other TFLite steps of the run fail at once with the same reason.
    """
    out_dir = ctx.work_dir / f"onnx2tf-{base.label}"
    failed = out_dir / "FAILED"
    if failed.exists():
        raise ConvertError(failed.read_text())
    found = {k: _find(out_dir / "tflite", k) for k in ONNX2TF_KINDS}
    if not all(found.values()):
        found = _run_onnx2tf(ctx, base, out_dir)
    return found[kind]  # type: ignore[return-value]


def _run_onnx2tf(ctx: Context, base: Model, out_dir: Path) -> dict[str, Path | None]:
    import time

    python = _onnx2tf_python()
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    copy = out_dir / "model.onnx"  # onnx2tf overwrites its input: give it a copy
    shutil.copyfile(base.onnx, copy)
    name = next(iter(ctx.calib.inputs))
    x = _sample(ctx)
    calib = out_dir / "calib.npy"
    np.save(calib, np.ascontiguousarray(x[:64], dtype=np.float32))  # ONNX layout, as -kat keeps it
    cmd = [python, "-m", "onnx2tf", "-i", str(copy), "-o", str(out_dir / "tflite"), "-b", "1", "-oiqt"]
    cmd += ["-kat", name, "-cind", name, str(calib), "[0.0]", "[1.0]"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    # onnx2tf runs the `onnxsim` console script of its own venv (missing -> a warning, no simplification)
    env["PATH"] = os.pathsep.join([str(Path(python).parent), env.get("PATH", "")])
    log_path = out_dir / "onnx2tf.log"
    t0 = time.perf_counter()
    try:
        with open(log_path, "w") as log:
            proc = subprocess.run(
                cmd, stdout=log, stderr=subprocess.STDOUT, timeout=3600, cwd=out_dir, env=env
            )
        reason = None if proc.returncode == 0 else f"onnx2tf failed: {_onnx2tf_error(log_path.read_text())}"
    except subprocess.TimeoutExpired:
        reason = "onnx2tf took more than an hour; stopped"
    except OSError as exc:
        reason = f"cannot run {python}: {exc}"
    found = {k: _find(out_dir / "tflite", k) for k in ONNX2TF_KINDS}
    if reason is None and not all(found.values()):
        missing = [k for k, p in found.items() if p is None]
        reason = f"onnx2tf did not produce {missing} (see {_keep_log(ctx, base, log_path)})"
    if reason is None:
        reason = _check_layout(found["float32"], base)  # type: ignore[arg-type]
    if reason is not None:
        if "see " not in reason and log_path.exists():
            reason += f" (log: {_keep_log(ctx, base, log_path)})"
        failed = out_dir / "FAILED"
        failed.write_text(reason)
        raise ConvertError(reason)
    ctx.log(f"    onnx2tf: {time.perf_counter() - t0:.1f} s for float32, float16 and full int8")
    return found


def _keep_log(ctx: Context, base: Model, log_path: Path) -> Path:
    """Failed onnx2tf logs are kept next to the artifacts (the work directory is removed at the end)."""
    kept = ctx.out_dir / f"onnx2tf-{base.label}.log"
    shutil.copyfile(log_path, kept)
    return kept


def _check_layout(tflite: Path, base: Model) -> str | None:
    """The artifact must take the ONNX model's input shape (batch 1): NCHW kept, not transposed to NHWC."""
    from ai_edge_litert.interpreter import Interpreter

    from converter.data import onnx_input_specs

    want = onnx_input_specs(base.onnx)[0].shape[1:]
    got = tuple(int(d) for d in Interpreter(model_path=str(tflite)).get_input_details()[0]["shape"])[1:]
    pairs = zip(want, got, strict=False)
    same = len(want) == len(got) and all(not isinstance(w, int) or w == g for w, g in pairs)
    if same:
        return None
    return f"onnx2tf changed the input layout: ONNX [N, {', '.join(map(str, want))}] -> TFLite [1, {got}]"
