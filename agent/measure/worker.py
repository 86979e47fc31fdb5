"""Measure one configuration (load, first inference, warmup, timed runs, memory, board, energy, profile).

Run in a fresh process per configuration by :mod:`agent.measure.bench`
(``python -m agent.measure.worker SPEC_JSON``), so memory figures are this model's alone; the JSON outcome
goes to the original stdout, everything the runtimes print goes to stderr. :func:`measure` also runs
in-process (``isolate=False``). Top-level imports stay minimal so the "baseline" memory phase is the
interpreter plus the agent.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.probes.memory import MemoryProbe

if TYPE_CHECKING:
    from agent.measure.runtimes import Session
    from wire.schema import ProtocolSettings


def measure(
    spec: dict[str, Any],
    *,
    clock: Callable[[], int] = time.perf_counter_ns,
    cancel: threading.Event | None = None,
    fresh_process: bool = False,
) -> dict[str, Any]:
    """spec: model, threads, batch, shapes, inputs, optimization, protocol (dict), profile_ops, root, seed.
    Returns a JSON-able outcome; ``error`` is set (one line) instead of raising for bad models/inputs."""
    from agent.errors import BenchError
    from wire.artifacts import ArtifactError

    mem = MemoryProbe()
    mem.mark("baseline")
    out: dict[str, Any] = {"error": None, "aborted": False}
    try:
        _measure(spec, clock, cancel, fresh_process, mem, out)
    except (BenchError, ArtifactError) as exc:
        out["error"] = str(exc)
    except MemoryError:
        out["error"] = "out of memory while running the model"
    except Exception as exc:  # a runtime failing mid-run: still one line, never a traceback
        from agent.measure.runtimes import one_line

        out["error"] = f"{type(exc).__name__}: {one_line(exc)}"
    return out


def _measure(
    spec: dict[str, Any],
    clock: Callable[[], int],
    cancel: threading.Event | None,
    fresh_process: bool,
    mem: MemoryProbe,
    out: dict[str, Any],
) -> None:
    """The phases in order (load, first inference, warmup, timed runs, profile), filling ``out``."""
    # Every module the phases use is loaded here, before the "after_import" memory mark (as it always
    # was); the phase helpers import their names again, which then costs a dict lookup.
    import agent.errors
    import agent.measure.inputs
    import agent.measure.protocol
    import agent.measure.runtimes
    import agent.probes.board
    import agent.probes.energy  # noqa: F401
    from agent.measure.protocol import warmup
    from wire.artifacts import check_model_file
    from wire.codec import decode, encode
    from wire.schema import ProtocolSettings

    model = check_model_file(spec["model"])
    settings = decode(ProtocolSettings, spec.get("protocol", {}))
    threads = int(spec.get("threads", 0))
    session = _load(model, threads, spec, clock, mem, out)
    feeds = _make_feeds(session, spec, out)
    step = _first_inference(model, session, feeds, clock, mem, out)

    wu = warmup(step, settings, clock, cancel)
    out["warmup_ns"], out["warmup_stable"] = list(wu.samples_ns), wu.stable
    if wu.aborted:
        out["aborted"] = True
        return
    mem.mark("after_warmup")

    _timed_runs(step, settings, spec, clock, cancel, out)
    mem.mark("inference_peak")
    mem.mark("end")
    out["memory"] = encode(mem.stats(fresh_process))
    if spec.get("profile_ops"):
        out["profile"] = _profile_ops(model, threads, session, feeds, spec)


def _load(
    model: Path,
    threads: int,
    spec: dict[str, Any],
    clock: Callable[[], int],
    mem: MemoryProbe,
    out: dict[str, Any],
) -> Session:
    """Import the runtime (memory mark "after_import"), then open the session ("load_peak")."""
    from agent.measure.runtimes import import_runtime, open_session
    from wire.artifacts import model_format

    import_runtime(model_format(model))
    import numpy  # noqa: F401  (part of "after runtime import")

    mem.mark("after_import")
    mem.reset()
    t0 = clock()
    session = open_session(model, threads=threads, optimization=spec.get("optimization", "all"))
    out["load_ms"] = (clock() - t0) / 1e6
    mem.mark("load_peak")
    out.update(runtime=session.runtime, runtime_version=session.version, options=session.options)
    return session


def _make_feeds(session: Session, spec: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """The model's inputs: from the spec's .npy/.npz data, else random (seeded), at the spec's shapes."""
    from agent.measure.inputs import make_inputs

    data = Path(spec["inputs"]) if spec.get("inputs") else None
    shapes = {k: tuple(v) for k, v in (spec.get("shapes") or {}).items()}
    feeds = make_inputs(
        session.inputs,
        shapes=shapes,
        batch=int(spec.get("batch", 1)),
        data=data,
        seed=int(spec.get("seed", 0)),
    )
    out["input_shapes"] = {k: list(v.shape) for k, v in feeds.items()}
    out["input_source"] = data.name if data else "random"
    return feeds


def _first_inference(
    model: Path,
    session: Session,
    feeds: dict[str, Any],
    clock: Callable[[], int],
    mem: MemoryProbe,
    out: dict[str, Any],
) -> Callable[[], Any]:
    """Bind the inputs and time the first inference; returns the bound step the later phases run."""
    from agent.errors import BenchError
    from agent.measure.runtimes import one_line

    mem.reset()
    step = session.bind(feeds)
    t0 = clock()
    try:
        step()
    except Exception as exc:
        raise BenchError(f"{model.name}: the first inference failed: {one_line(exc)}") from None
    out["first_inference_ms"] = (clock() - t0) / 1e6
    return step


def _timed_runs(
    step: Callable[[], Any],
    settings: ProtocolSettings,
    spec: dict[str, Any],
    clock: Callable[[], int],
    cancel: threading.Event | None,
    out: dict[str, Any],
) -> None:
    """The timed loop, with the board sampled, energy metered and CPU time counted around it."""
    from agent.measure.protocol import timed
    from agent.probes.board import BoardProbe, BoardSampler, board_state
    from agent.probes.energy import EnergyMeter
    from wire.codec import encode
    from wire.schema import CpuStats

    probe = BoardProbe(Path(spec.get("root", "/")))
    energy = EnergyMeter(Path(spec.get("root", "/")), probe)
    cpu_start = probe.cpu_times()
    energy.start()
    sampler = BoardSampler(probe, energy, interval_s=float(spec.get("sample_interval_s", 1.0))).start()
    c0 = _cpu_times()
    loop = timed(step, settings, clock, cancel)
    c1 = _cpu_times()
    samples = sampler.stop()
    n = loop.n
    out["energy"] = encode(energy.stop(n, loop.elapsed_ns / 1e9))
    out["board"] = encode(board_state(probe, samples, cpu_start, probe.cpu_times()))
    out.update(loop.outcome())  # "timed" (every run, or past 65,536 the histogram), "stop", elapsed, aborted
    user, system = c1[0] - c0[0], c1[1] - c0[1]
    out["cpu"] = encode(
        CpuStats(cpu_s_per_inference=(user + system) / max(n, 1), user_s=user, system_s=system)
    )


def _profile_ops(
    model: Path, threads: int, session: Session, feeds: dict[str, Any], spec: dict[str, Any]
) -> list[dict[str, Any]]:
    """Per-operator profile in a separate pass (ORT trace; LiteRT: where each op was delegated)."""
    from agent.measure import profile
    from wire.codec import encode

    if session.runtime == "onnxruntime":
        ops = profile.profile_onnx(model, threads, feeds, runs=int(spec.get("profile_runs", 50)))
    else:
        ops = profile.profile_tflite(session.handle)
    return [encode(op) for op in ops]


def _cpu_times() -> tuple[float, float]:
    """(user, system) CPU seconds of this process, all threads (getrusage: microsecond resolution)."""
    try:
        import resource

        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime, ru.ru_stime
    except ImportError:
        t = os.times()
        return t.user, t.system


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(args[0])
    result_fd = os.dup(1)
    os.dup2(2, 1)  # whatever the runtimes print goes to stderr; only the outcome goes to stdout
    outcome = measure(spec, fresh_process=True)
    with os.fdopen(result_fd, "w") as fh:
        fh.write(json.dumps(outcome, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
