"""Run a recipe: load the source, the data, every pass, check every artifact, write manifest.json.

A recipe is a list of steps ``{"pass": <registered name>, "params": {...}, "name": <artifact name>,
"from": <earlier step name>}`` (only "pass" is required; "from" chains a step onto the model a pruning or
distillation step produced). Built in: ``default`` and ``all``; or a JSON file holding such a list (or
``{"steps": [...]}``). A failing step is recorded (status "failed", its reason) and the others continue.

Every artifact is checked against the fp32 outputs on the validation data, by output kind, and given a
status (ok / degraded / no-op / failed: :mod:`converter.run`, :mod:`converter.fidelity`). "recommended":
among the ``ok`` artifacts (the fp32 reference included), the smallest and simplest of those not slower,
by their host-latency confidence intervals, than the fastest one nor than the reference
(:mod:`converter.recommend`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converter import passes
from converter.data import Dataset, load_dataset, onnx_input_specs
from converter.errors import ConvertError
from converter.evaluate import file_sha256, measure
from converter.fidelity import FidelityBounds, profile_reference
from converter.recommend import recommend
from converter.run import ConversionRun, Reference, Step, silenced
from wire.manifest import Manifest, ManifestArtifact, SourceInfo

DEFAULT_RECIPE: list[dict[str, Any]] = [
    {"pass": "optimize"},
    {"pass": "fp16"},
    {"pass": "int8_dynamic"},
    {"pass": "int8_static"},
    {"pass": "tflite_fp32"},
    {"pass": "tflite_fp16"},
    {"pass": "tflite_int8_dynamic"},
    {"pass": "tflite_int8"},
]
ALL_RECIPE: list[dict[str, Any]] = [
    *DEFAULT_RECIPE,
    {"pass": "int8_static", "name": "int8_static-entropy", "params": {"calibration": "Entropy"}},
    {"pass": "tflite_int8", "name": "tflite_int8-pt2e", "params": {"method": "pt2e"}},
    {"pass": "prune_magnitude"},
    {"pass": "prune_channels"},
    {"pass": "distill"},
    {"pass": "int8_static", "name": "distill-int8_static", "from": "distill"},
    {"pass": "tflite_int8", "name": "distill-tflite_int8", "from": "distill"},
]
RECIPES = {"default": DEFAULT_RECIPE, "all": ALL_RECIPE}


@dataclass(frozen=True)
class ConvertResult:
    manifest_path: Path
    manifest: Manifest
    reference: ManifestArtifact
    memory_mb: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # e.g. an uninformative reference (fidelity judged on continuous metrics)


def load_recipe(recipe: str | Path) -> list[Step]:
    if str(recipe) in RECIPES:
        raw: Any = RECIPES[str(recipe)]
    else:
        path = Path(recipe)
        if not path.is_file():
            raise ConvertError(f"recipe {recipe!r} is neither {'/'.join(RECIPES)} nor a file")
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConvertError(f"recipe {path}: not valid JSON ({exc})") from None
        if isinstance(raw, dict):
            raw = raw.get("steps")
    if not isinstance(raw, list) or not raw:
        raise ConvertError("a recipe is a non-empty list of steps")
    steps: list[Step] = []
    names: set[str] = set()
    for i, entry in enumerate(raw):
        if isinstance(entry, str):
            entry = {"pass": entry}
        if not isinstance(entry, dict) or "pass" not in entry:
            raise ConvertError(f"recipe step {i}: expected an object with a 'pass' key")
        name = str(entry.get("name") or entry["pass"])
        if name in names or name == "fp32":
            raise ConvertError(f"recipe step {i}: duplicate step name {name!r}")
        src = entry.get("from")
        if src is not None and src not in names:
            raise ConvertError(f"recipe step {name!r}: 'from' names {src!r}, which is not an earlier step")
        steps.append(Step(name, entry["pass"], passes.make_params(entry["pass"], entry.get("params")), src))
        names.add(name)
    return steps


def _load_source(
    model: str, state_dict: str | None, val_path: str | Path, work: Path, log
) -> tuple[passes.Model, str, str]:
    """-> (base model, source format, display name)."""
    from converter.pytorch import is_factory_spec

    if is_factory_spec(model):
        from converter.pytorch import export_onnx, load_factory

        with silenced(work / "export.log"):
            module = load_factory(model, state_dict)
        # the sample for the export: validation data, read without a model to check it against
        arr = _raw_first_input(Path(val_path))
        onnx_path = work / "source.onnx"
        log(f"exporting {model} to ONNX (dynamic batch) and checking it against PyTorch")
        with silenced(work / "export.log"):
            export_onnx(module, arr[:8], onnx_path)
        module_name, _, attr = model.partition(":")
        generic = attr in ("pretrained", "build", "model", "create", "factory", "get_model", "make")
        return passes.Model(onnx_path, module), "pytorch", module_name.rpartition(".")[2] if generic else attr
    path = Path(model)
    if not path.is_file():
        raise ConvertError(f"model not found: {model} (an .onnx file or package.module:factory)")
    onnx_input_specs(path)  # validates that onnxruntime can load it
    return passes.Model(path), "onnx", path.stem


def _raw_first_input(path: Path) -> np.ndarray:
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                key = next(
                    (k for k in ("x", "inputs", "input", "data", "images") if k in npz.files), npz.files[0]
                )
                return npz[key].astype(np.float32)
    except (OSError, ValueError, IndexError) as exc:
        raise ConvertError(f"cannot read {path}: {exc}") from None
    raise ConvertError("a PyTorch source needs .npy/.npz validation data (its shape gives the export sample)")


def convert(
    model: str,
    *,
    calib: str | Path,
    val: str | Path,
    out_dir: str | Path,
    recipe: str | Path = "default",
    max_accuracy_drop: float = 1.0,
    min_cosine: float = 0.99,
    max_relative_error: float | None = None,
    output_kind: str = "auto",
    state_dict: str | None = None,
    max_val: int = 1000,
    latency_budget_s: float = 2.0,
    latency_rounds: int = 10,
    log: Callable[[str], None] = print,
) -> ConvertResult:
    """Run ``recipe`` on ``model``; ``latency_budget_s``: seconds of host timing per artifact, split into
    ``latency_rounds`` interleaved rounds (0: no timing, no recommendation)."""
    steps = load_recipe(recipe)
    bounds = FidelityBounds(max_accuracy_drop, min_cosine, max_relative_error)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".work"
    work.mkdir(exist_ok=True)
    base, src_format, display = _load_source(model, state_dict, val, work, log)
    specs = onnx_input_specs(base.onnx)
    calib_data = load_dataset(calib, specs)
    val_data: Dataset = load_dataset(val, specs).take(max_val)
    ref_path = out / "fp32.onnx"
    shutil.copyfile(base.onnx, ref_path)
    with silenced(work / "measure.log"):  # first, so its memory figure is not the allocator's leftovers
        measured = measure(ref_path, val_data)
    ref_out = measured[1]
    profile = profile_reference(ref_out, val_data.labels, bounds, output_kind)
    shape = list(ref_out.shape[1:])
    log(f"fidelity: {profile.kind} outputs {shape}, judged on {_basis_text(profile, bounds)}")
    if profile.warning:
        log(f"warning: {profile.warning}")
    run = ConversionRun(out, display, val_data, Reference(ref_path, ref_out, profile), bounds, log)
    base = passes.Model(ref_path, base.torch, "fp32")
    ctx = passes.Context(base, calib_data, val_data, out, work, max_accuracy_drop, ref_out, log, run.check)
    log("[fp32] reference")
    reference, _ = run.record("fp32", ref_path, "onnx", "fp32", (), measured=measured)
    run.source = SourceInfo(
        name=display,
        path=str(model),
        sha256=file_sha256(Path(model)) if src_format == "onnx" else reference.sha256,
        format=src_format,
    )
    for i, step in enumerate(steps, 1):
        log(f"[{i}/{len(steps)}] {step.name} ({step.pass_name})")
        run.step(ctx, base, step)
        run.save()
    run.time_artifacts(latency_budget_s, latency_rounds)
    reference = next(a for a in run.artifacts if a.name == "fp32")
    path, manifest = run.save()
    shutil.rmtree(work, ignore_errors=True)
    warnings = (profile.warning,) if profile.warning else ()
    return ConvertResult(path, manifest, reference, run.memory, run.notes, warnings)


def _basis_text(profile, bounds: FidelityBounds) -> str:
    if profile.basis == "continuous":
        rel = (
            f", relative error <= {bounds.max_relative_error}"
            if bounds.max_relative_error is not None
            else ""
        )
        return f"continuous metrics (ok: cosine >= {bounds.min_cosine}{rel})"
    what = "accuracy (labels)" if profile.basis == "accuracy" else "top-1 agreement with fp32"
    return f"{what} (ok: at most {bounds.max_accuracy_drop} pt lost)"


__all__ = ["ConvertResult", "Step", "convert", "load_recipe", "recommend", "silenced"]
