"""One conversion's state: every artifact made so far, checked against the fp32 outputs and given a status,
the models later steps chain from, the host timing, and manifest.json written after every step.

Status of an artifact (see :mod:`wire.manifest`): ``failed`` (the pass raised), ``no-op`` (the pass left its
input as it was: :mod:`converter.noop`), ``degraded`` (outside the fidelity bounds of the reference's
basis: :mod:`converter.fidelity`), else ``ok``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from converter import passes
from converter.data import Dataset
from converter.errors import ConvertError
from converter.evaluate import Measurement, interleaved_latency, measure, reference_outputs
from converter.fidelity import FidelityBounds, ReferenceProfile, Verdict, fidelity, judge
from converter.noop import unchanged_reason
from converter.recommend import recommend
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

TIMED_STATUSES = ("ok", "degraded")  # no-op: its input's figure stands; failed: no file


@dataclass(frozen=True)
class Step:
    name: str
    pass_name: str
    params: Any
    source: str | None = None  # "from"


@dataclass(frozen=True)
class Reference:
    """The fp32 model's outputs on the validation set and what they allow fidelity to claim."""

    path: Path
    outputs: np.ndarray
    profile: ReferenceProfile


class ConversionRun:
    def __init__(
        self,
        out: Path,
        display: str,
        val_data: Dataset,
        reference: Reference,
        bounds: FidelityBounds,
        log: Callable[[str], None],
    ) -> None:
        self.out, self.work, self.display, self.log = out, out / ".work", display, log
        self.val_data, self.reference, self.bounds = val_data, reference, bounds
        self.source: SourceInfo | None = None
        self.artifacts: list[ManifestArtifact] = []
        self.memory: dict[str, float | None] = {}
        self.notes: dict[str, tuple[str, ...]] = {}
        self.bases: dict[str, passes.Model] = {}
        self.chains: dict[str, tuple[PassRecord, ...]] = {}
        self._outputs: dict[Path, np.ndarray] = {reference.path: reference.outputs}

    def check(self, path: Path) -> Verdict:
        """The artifact's fidelity and whether it is within the bounds (what passes' fallbacks use)."""
        with silenced(self.work / "measure.log"):
            _, outputs = measure(path, self.val_data)
        return self._judge(outputs)

    def _judge(self, outputs: np.ndarray) -> Verdict:
        ref = self.reference
        fid = fidelity(ref.outputs, outputs, self.val_data.labels, ref.profile.kind)
        return judge(fid, ref.profile, self.bounds)

    def _outputs_of(self, model: passes.Model) -> np.ndarray:
        if model.onnx not in self._outputs:
            with silenced(self.work / "measure.log"):
                self._outputs[model.onnx] = reference_outputs(model.onnx, self.val_data)
        return self._outputs[model.onnx]

    def record(
        self,
        name: str,
        path: Path,
        fmt: str,
        precision: str,
        pass_records: tuple[PassRecord, ...],
        start: passes.Model | None = None,
        measured: tuple[Measurement, np.ndarray] | None = None,
    ) -> tuple[ManifestArtifact, Verdict]:
        """Measure the artifact (unless ``measured`` already; latency: timed at the end, interleaved) and
        give it its status; ``start``: the model its pass started from (None: this is the reference, ok
        by definition, even under a budget below zero)."""
        if measured is None:
            with silenced(self.work / "measure.log"):
                measured = measure(path, self.val_data)
        m, outputs = measured
        verdict = self._judge(outputs)
        status, reason = ("degraded", verdict.miss) if verdict.miss and start is not None else ("ok", None)
        if start is not None and fmt == "onnx":
            noop = unchanged_reason(
                start.onnx,
                path,
                start_outputs=self._outputs_of(start),
                outputs=outputs,
                claims_new_precision=precision != "fp32",
            )
            if noop is not None:
                status, reason = "no-op", noop
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
            fidelity=verdict.fidelity,
            host_peak_mb=m.memory_mb,
            status=status,
            error=reason,
        )
        self.artifacts.append(art)
        return art, verdict

    def manifest(self) -> Manifest:
        assert self.source is not None
        val, profile, bounds = self.val_data, self.reference.profile, self.bounds
        return Manifest(
            created_at=utc_now(),
            source=self.source,
            validation=ValidationInfo(
                dataset=val.name,
                n=val.n,
                has_labels=val.labels is not None,
                output_kind=profile.kind,
                fidelity_basis=profile.basis,
                reference_classes=profile.classes_seen,
                reference_majority_pct=profile.majority_pct,
            ),
            max_accuracy_drop=bounds.max_accuracy_drop,
            min_cosine=bounds.min_cosine,
            max_relative_error=bounds.max_relative_error,
            artifacts=tuple(self.artifacts),
            recommended=recommend(self.artifacts),
        )

    def save(self) -> tuple[Path, Manifest]:
        """Written after every step, so an interrupted run keeps its partial results."""
        manifest = self.manifest()
        return write_manifest(manifest, self.out / "manifest.json"), manifest

    def step(self, ctx: passes.Context, base: passes.Model, step: Step) -> None:
        """Run one recipe step; a failing pass is recorded as a failed artifact and the others go on."""
        t0 = time.perf_counter()
        prior = self.chains.get(step.source, ()) if step.source else ()
        pass_records = (*prior, PassRecord(step.pass_name, passes.params_dict(step.params)))
        try:
            if step.source and step.source not in self.bases:
                raise ConvertError(f"step {step.source!r} produced no model to continue from")
            start = self.bases[step.source] if step.source else base
            output = self._run_pass(ctx, start, step)
            if output.model is not None:
                output.model.label = step.name
                self.bases[step.name] = output.model
                self.chains[step.name] = pass_records
            self.notes[step.name] = output.notes
            art, verdict = self.record(
                step.name, output.path, output.format, output.precision, pass_records, start
            )
            for note in output.notes:
                self.log(f"    {note}")
            took = f"in {time.perf_counter() - t0:.1f}s: {art.size_bytes / 1e6:.2f} MB, {verdict.summary}"
            self.log(
                {
                    "ok": f"    ok {took}",
                    "degraded": f"    DEGRADED {took}: {art.error} (kept, never recommended)",
                    "no-op": f"    NO-OP {took}: {art.error}",
                }[art.status]
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

    def time_artifacts(self, budget_s: float, rounds: int) -> None:
        """Host latency with a CI of every ok/degraded artifact, in interleaved rounds (fair on a busy
        machine); ``budget_s`` seconds of timing per artifact."""
        timed = [(i, a) for i, a in enumerate(self.artifacts) if a.status in TIMED_STATUSES]
        if budget_s <= 0:
            self.log("[timing] latency not measured (latency budget 0)")
            return
        total = budget_s * len(timed)
        self.log(
            f"[timing] {len(timed)} artifact(s), batch 1, {rounds} interleaved rounds of "
            f"{budget_s / max(1, rounds):.2f} s each (~{total:.0f} s in all)"
        )
        one = {k: v[:1] for k, v in self.val_data.inputs.items()}
        paths = {a.name: self.out / a.file for _, a in timed}
        try:
            with silenced(self.work / "measure.log"):
                estimates = interleaved_latency(paths, one, budget_s=budget_s, rounds=rounds)
        except Exception as exc:  # timing is a ranking aid: without it the artifacts still stand
            reason = (str(exc).splitlines() or [""])[0][:200]
            self.log(f"    latency not measured: {type(exc).__name__}: {reason}")
            return
        coverage = min((e.coverage for e in estimates.values()), default=0.0)
        self.log(f"    latency: median of the round medians, CI over the rounds (coverage {coverage:.1%})")
        for i, a in timed:
            e = estimates[a.name]
            self.artifacts[i] = replace(
                a, host_latency_ms=e.median_ms, host_latency_ci_ms=(e.low_ms, e.high_ms)
            )


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
