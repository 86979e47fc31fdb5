"""The measurement engine: options, presets and :func:`run_benchmark` (one ResultRecord per configuration).

Protocol (see agent.measure.protocol for the loops and agent.measure.stats for the figures): cold start
(load and first inference, reported apart), warmup until consecutive windows agree, timed runs (the stop
rule: >= N runs and >= T seconds; a time cap never below T; no run cap unless set), optional repeats each in
a fresh process, thread and batch sweeps. With ``isolate=True`` (the default) every repeat of every
configuration runs in a fresh ``python -m agent.measure.worker`` process so memory figures are the model's
own. Bad models and inputs never raise: they
give records with status "failed" and a one-line reason; a set ``cancel`` event gives "aborted".
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import BenchError
from agent.measure.protocol import with_stop_rule
from agent.measure.records import build_record, failed_record
from wire.artifacts import ArtifactError, artifact_info, placeholder_artifact
from wire.codec import encode
from wire.schema import ArtifactInfo, BenchSettings, DeviceInfo, ProtocolSettings, ResultRecord, utc_now

PRESETS: dict[str, ProtocolSettings] = {
    # for tests and a first look: seconds, not minutes
    "quick": ProtocolSettings(
        preset="quick",
        warmup_min_runs=5,
        warmup_window=5,
        warmup_tolerance=0.10,
        warmup_max_s=1.0,
        min_runs=20,
        min_time_s=0.2,
        max_time_s=2.0,
    ),
    # a Pi: 100 runs and 10 s at least, capped at 60 s (a 200 ms model on a Pi 3 gets 100 runs in 20 s);
    # no preset caps the run count
    "default": ProtocolSettings(),
    "thorough": ProtocolSettings(
        preset="thorough",
        warmup_min_runs=20,
        warmup_window=20,
        warmup_tolerance=0.03,
        warmup_max_s=30.0,
        min_runs=300,
        min_time_s=30.0,
        max_time_s=180.0,
        repeats=3,
    ),
}
LOAD_ALLOWANCE_S = 180.0  # on top of the protocol's caps before a child process is declared hung


@dataclass(frozen=True)
class BenchOptions:
    protocol: ProtocolSettings = field(default_factory=ProtocolSettings)
    threads: tuple[int, ...] = ()  # empty: the runtime's default (recorded as threads=0)
    batch: int = 1
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    inputs: Path | None = None  # .npy / .npz
    profile_ops: bool = False
    cooldown_c: float | None = None
    isolate: bool = True
    batches: tuple[int, ...] = ()  # a batch sweep; empty: (batch,)
    optimization: str = "all"  # ORT graph optimization level: disable, basic, extended, all
    root: Path = Path("/")  # sysfs/procfs root for board and energy probes
    seed: int = 0
    cooldown_max_s: float = 300.0
    sample_interval_s: float = 1.0
    clock: Callable[[], int] = field(default=time.perf_counter_ns, compare=False, repr=False)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> BenchOptions:
        if name not in PRESETS:
            raise BenchError(f"unknown preset {name!r} (one of {', '.join(PRESETS)})")
        return cls(protocol=with_stop_rule(PRESETS[name]), **overrides)

    @classmethod
    def from_settings(cls, settings: BenchSettings, **overrides: Any) -> BenchOptions:
        """A job's settings -> options (preset, then the job's own overrides)."""
        base = cls.preset(settings.preset)
        changes: dict[str, Any] = {"repeats": max(1, settings.repeats)}
        for name in ("min_runs", "min_time_s", "max_time_s"):
            value = getattr(settings, name)
            if value is not None:
                changes[name] = value
        protocol = with_stop_rule(dataclasses.replace(base.protocol, **changes))
        return cls(
            protocol=protocol,
            threads=tuple(settings.threads),
            batch=settings.batch,
            shapes={k: tuple(v) for k, v in settings.shapes.items()},
            profile_ops=settings.profile_ops,
            cooldown_c=settings.cooldown_c,
            **overrides,
        )

    def with_protocol(self, **changes: Any) -> BenchOptions:
        """Changed protocol settings; a time cap below the time floor is raised to it (the stop rule)."""
        protocol = with_stop_rule(dataclasses.replace(self.protocol, **changes))
        return dataclasses.replace(self, protocol=protocol)

    def configurations(self) -> list[tuple[int, int]]:
        return [(t, b) for t in (self.threads or (0,)) for b in (self.batches or (self.batch,))]


def _spec(model: Path, options: BenchOptions, threads: int, batch: int) -> dict[str, Any]:
    return {
        "model": str(model),
        "threads": threads,
        "batch": batch,
        "shapes": {k: list(v) for k, v in options.shapes.items()},
        "inputs": str(options.inputs) if options.inputs else None,
        "optimization": options.optimization,
        "protocol": encode(options.protocol),
        "profile_ops": options.profile_ops,
        "root": str(options.root),
        "seed": options.seed,
        "sample_interval_s": options.sample_interval_s,
    }


def run_child(spec: dict[str, Any], cancel: threading.Event | None, timeout_s: float) -> dict[str, Any]:
    """Run one measurement in a fresh ``python -m agent.measure.worker`` process (killed by PID on cancel
    or timeout)."""
    env = dict(os.environ)
    pkg_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.measure.worker", json.dumps(spec)],
            stdout=out,
            stderr=err,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                rc = proc.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                if cancel is not None and cancel.is_set():
                    proc.kill()
                    proc.wait()
                    return {"error": "cancelled", "aborted": True}
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    return {"error": f"the benchmark process did not finish within {timeout_s:.0f} s"}
        out.seek(0)
        lines = [ln for ln in out.read().decode(errors="replace").splitlines() if ln.strip()]
        if rc == 0 and lines:
            try:
                return json.loads(lines[-1])
            except ValueError:
                pass
        err.seek(0)
        tail = [ln for ln in err.read().decode(errors="replace").splitlines() if ln.strip()]
        how = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
        last = f": {tail[-1][:200]}" if tail else ""
        return {"error": f"the runtime crashed ({how}){last}"}


def _measure(
    model: Path, options: BenchOptions, threads: int, batch: int, cancel: threading.Event | None
) -> dict[str, Any]:
    spec = _spec(model, options, threads, batch)
    if options.isolate:
        p = options.protocol
        timeout = p.warmup_max_s + p.max_time_s + LOAD_ALLOWANCE_S + (120.0 if options.profile_ops else 0.0)
        return run_child(spec, cancel, timeout)
    from agent.measure.worker import measure

    return measure(spec, clock=options.clock, cancel=cancel, fresh_process=False)


def run_benchmark(
    model_path: Path,
    options: BenchOptions,
    *,
    device: DeviceInfo,
    artifact: ArtifactInfo | None = None,
    job_id: str | None = None,
    cancel: threading.Event | None = None,
) -> list[ResultRecord]:
    """Benchmark one model file: one ResultRecord per (threads, batch) configuration. Never raises for a
    bad model or input (status "failed"); a set ``cancel`` gives status "aborted" for what is left."""
    model_path = Path(model_path)
    started = utc_now()
    configs = options.configurations()
    try:
        artifact = artifact or artifact_info(model_path)
    except (BenchError, ArtifactError) as exc:
        art = placeholder_artifact(model_path)
        return [failed_record(device, art, options, t, b, started, str(exc), job_id) for t, b in configs]
    records: list[ResultRecord] = []
    model_error: str | None = None
    for threads, batch in configs:
        started = utc_now()
        if model_error is not None:
            records.append(
                failed_record(device, artifact, options, threads, batch, started, model_error, job_id)
            )
            continue
        if cancel is not None and cancel.is_set():
            records.append(
                failed_record(
                    device, artifact, options, threads, batch, started, "cancelled", job_id, status="aborted"
                )
            )
            continue
        cooldown = None
        if options.cooldown_c is not None:
            from agent.probes.board import BoardProbe, wait_for_cooldown

            cooldown = wait_for_cooldown(BoardProbe(options.root), options.cooldown_c, options.cooldown_max_s)
        outcomes: list[dict[str, Any]] = []
        for _ in range(max(1, options.protocol.repeats)):
            outcome = _measure(model_path, options, threads, batch, cancel)
            outcomes.append(outcome)
            if outcome.get("error") or outcome.get("aborted"):
                break
        last = outcomes[-1]
        if last.get("aborted"):
            records.append(
                failed_record(
                    device,
                    artifact,
                    options,
                    threads,
                    batch,
                    started,
                    "cancelled while running",
                    job_id,
                    status="aborted",
                    outcome=last,
                )
            )
        elif last.get("error"):
            if "load_ms" not in last:
                model_error = last["error"]  # the same for every configuration: do not retry
            records.append(
                failed_record(
                    device, artifact, options, threads, batch, started, last["error"], job_id, outcome=last
                )
            )
        else:
            records.append(
                build_record(device, artifact, options, threads, batch, started, outcomes, job_id, cooldown)
            )
    return records


__all__ = ["PRESETS", "BenchError", "BenchOptions", "run_benchmark"]
