"""Run a recipe: load the source, the data, every pass, check every artifact, write manifest.json.

A recipe is a list of steps ``{"pass": <registered name>, "params": {...}, "name": <artifact name>,
"from": <earlier step name>}`` (only "pass" is required; "from" chains a step onto the model a pruning or
distillation step produced). Built in: ``default`` and ``all``; or a JSON file holding such a list (or
``{"steps": [...]}``). A failing step is recorded (status "failed", its reason) and the others continue.

"recommended" = the fastest artifact (host latency) whose accuracy drop fits the budget, across ONNX and
TFLite, and never one slower than the fp32 reference (which is itself a candidate).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from converter import passes
from converter.data import Dataset, load_dataset, onnx_input_specs
from converter.errors import ConvertError
from converter.evaluate import accuracy_drop, file_sha256, interleaved_latency, measure, reference_outputs
from wire.manifest import (
    Fidelity,
    Manifest,
    ManifestArtifact,
    PassRecord,
    SourceInfo,
    ValidationInfo,
    utc_now,
    write_manifest,
)

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
class Step:
    name: str
    pass_name: str
    params: Any
    source: str | None = None  # "from"


@dataclass(frozen=True)
class ConvertResult:
    manifest_path: Path
    manifest: Manifest
    reference: ManifestArtifact
    memory_mb: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, tuple[str, ...]] = field(default_factory=dict)


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
    state_dict: str | None = None,
    max_val: int = 1000,
    latency_budget_s: float = 0.5,
    latency_rounds: int = 3,
    log: Callable[[str], None] = print,
) -> ConvertResult:
    steps = load_recipe(recipe)
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
    run = _Run(out, work, display, val_data, reference_outputs(ref_path, val_data), max_accuracy_drop, log)
    base = passes.Model(ref_path, base.torch, "fp32")
    ctx = passes.Context(
        base, calib_data, val_data, out, work, max_accuracy_drop, run.ref_out, log, run.drop_of
    )
    log("[fp32] reference")
    reference = run.record("fp32", ref_path, "onnx", "fp32", ())
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
    _time_artifacts(run.artifacts, out, val_data, latency_budget_s, latency_rounds, log)
    reference = next(a for a in run.artifacts if a.name == "fp32")
    path, manifest = run.save()
    shutil.rmtree(work, ignore_errors=True)
    return ConvertResult(path, manifest, reference, run.memory, run.notes)


class _Run:
    """One conversion's state: the artifacts made so far (each checked against the fp32 outputs), the
    models later steps chain from, and manifest.json written after every step."""

    def __init__(
        self,
        out: Path,
        work: Path,
        display: str,
        val_data: Dataset,
        ref_out: Any,
        max_accuracy_drop: float,
        log: Callable[[str], None],
    ) -> None:
        self.out, self.work, self.display, self.log = out, work, display, log
        self.val_data, self.ref_out, self.max_accuracy_drop = val_data, ref_out, max_accuracy_drop
        self.source: SourceInfo | None = None
        self.artifacts: list[ManifestArtifact] = []
        self.memory: dict[str, float | None] = {}
        self.notes: dict[str, tuple[str, ...]] = {}
        self.bases: dict[str, passes.Model] = {}
        self.chains: dict[str, tuple[PassRecord, ...]] = {}

    def drop_of(self, path: Path) -> float:
        m, _ = measure(path, self.ref_out, self.val_data)
        return accuracy_drop(m.fidelity)

    def record(
        self, name: str, path: Path, fmt: str, precision: str, pass_records: tuple[PassRecord, ...]
    ) -> ManifestArtifact:
        with silenced(self.work / "measure.log"):
            m, _ = measure(path, self.ref_out, self.val_data)  # latency: timed at the end, interleaved
        self.memory[name] = m.memory_mb
        art = ManifestArtifact(
            name=name,
            file=path.name,
            sha256=m.sha256,
            size_bytes=m.size_bytes,
            gzip_bytes=m.gzip_bytes,
            format=fmt,
            precision=precision,
            variant=name,
            model=self.display,
            passes=pass_records,
            fidelity=m.fidelity,
            host_peak_mb=m.memory_mb,
        )
        self.artifacts.append(art)
        return art

    def save(self) -> tuple[Path, Manifest]:
        """Written after every step, so an interrupted run keeps its partial results."""
        assert self.source is not None
        val = self.val_data
        manifest = Manifest(
            created_at=utc_now(),
            source=self.source,
            validation=ValidationInfo(dataset=val.name, n=val.n, has_labels=val.labels is not None),
            max_accuracy_drop=self.max_accuracy_drop,
            artifacts=tuple(self.artifacts),
            recommended=recommend(self.artifacts, self.max_accuracy_drop),
        )
        return write_manifest(manifest, self.out / "manifest.json"), manifest

    def step(self, ctx: passes.Context, base: passes.Model, step: Step) -> None:
        """Run one recipe step; a failing pass is recorded as a failed artifact and the others go on."""
        t0 = time.perf_counter()
        prior = self.chains.get(step.source, ()) if step.source else ()
        pass_records = (*prior, PassRecord(step.pass_name, passes.params_dict(step.params)))
        try:
            if step.source and step.source not in self.bases:
                raise ConvertError(f"step {step.source!r} produced no model to continue from")
            output = self._run_pass(ctx, self.bases[step.source] if step.source else base, step)
            if output.model is not None:
                output.model.label = step.name
                self.bases[step.name] = output.model
                self.chains[step.name] = pass_records
            self.notes[step.name] = output.notes
            art = self.record(step.name, output.path, output.format, output.precision, pass_records)
            for note in output.notes:
                self.log(f"    {note}")
            self.log(
                f"    ok in {time.perf_counter() - t0:.1f}s: {art.size_bytes / 1e6:.2f} MB, "
                f"drop {accuracy_drop(art.fidelity):.2f} pt"
            )
        except Exception as exc:  # a failing pass is reported and the others continue
            reason = str(exc) if isinstance(exc, ConvertError) else f"{type(exc).__name__}: {exc}"
            reason = (reason.strip().splitlines() or ["failed"])[0][:400]
            self.log(f"    FAILED: {reason}")
            self.artifacts.append(self._failed(step, pass_records, reason))

    def _run_pass(self, ctx: passes.Context, start: passes.Model, step: Step) -> Any:
        """The pass's own log lines are shown after it ends (its C++ chatter goes to passes.log)."""
        spec = passes.get(step.pass_name)
        buffered: list[str] = []
        ctx.log = buffered.append
        try:
            with silenced(self.work / "passes.log"):
                return spec.run(ctx, start, step.params, step.name)
        finally:
            ctx.log = self.log
            for line in buffered:
                self.log(line)

    def _failed(self, step: Step, pass_records: tuple[PassRecord, ...], reason: str) -> ManifestArtifact:
        return ManifestArtifact(
            name=step.name,
            file="",
            sha256="",
            size_bytes=0,
            gzip_bytes=0,
            format="tflite" if step.pass_name.startswith("tflite") else "onnx",
            precision="",
            variant=step.name,
            model=self.display,
            passes=pass_records,
            fidelity=Fidelity(),
            status="failed",
            error=reason,
        )


def _time_artifacts(
    artifacts: list[ManifestArtifact],
    out: Path,
    val_data: Dataset,
    budget_s: float,
    rounds: int,
    log: Callable[[str], None],
) -> None:
    """Host latency of every artifact made, in interleaved rounds (fair ranking on a busy machine)."""
    ok = [(i, a) for i, a in enumerate(artifacts) if a.status == "ok"]
    if budget_s <= 0:
        log("[timing] latency not measured (latency budget 0)")
        return
    log(f"[timing] {len(ok)} artifact(s), batch 1, {rounds} interleaved rounds of {budget_s / rounds:.2f} s")
    one = {k: v[:1] for k, v in val_data.inputs.items()}
    paths = {a.name: out / a.file for _, a in ok}
    try:
        with silenced(out / ".work" / "measure.log"):
            timed = interleaved_latency(paths, one, budget_s=budget_s, rounds=rounds)
    except Exception as exc:  # timing is a ranking aid: without it the artifacts still stand
        reason = (str(exc).splitlines() or [""])[0][:200]
        log(f"    latency not measured: {type(exc).__name__}: {reason}")
        return
    for i, a in ok:
        artifacts[i] = replace(a, host_latency_ms=timed.get(a.name))


@contextlib.contextmanager
def silenced(log_file: Path):
    """Send file descriptors 1 and 2 (the converters' own chatter, C++ logs included) to ``log_file``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_file, "ab") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def recommend(artifacts: list[ManifestArtifact], budget: float) -> str | None:
    ok = [a for a in artifacts if a.status == "ok" and a.host_latency_ms is not None]
    ref = next((a for a in ok if a.name == "fp32"), None)
    limit = ref.host_latency_ms if ref else float("inf")
    fits = [a for a in ok if accuracy_drop(a.fidelity) <= budget and a.host_latency_ms <= limit]  # type: ignore[operator]
    if not fits:
        return ref.name if ref else None
    return min(fits, key=lambda a: a.host_latency_ms).name  # type: ignore[arg-type,return-value]


__all__ = ["ConvertResult", "convert", "load_recipe", "recommend", "replace"]
