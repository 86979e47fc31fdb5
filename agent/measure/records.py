"""Outcomes of agent.measure.worker (one per repeat) -> the wire's ResultRecord.

The options come in as :class:`RecordOptions`, the four fields a record reports, so that this module does
not import agent.measure.bench (which imports it: no cycle). ``BenchOptions`` is one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from agent.measure.runtimes import runtime_name
from agent.measure.stats import NS_PER_MS, Kept, kept_percentile, merge_kept, summarize
from wire.codec import decode
from wire.schema import (
    ArtifactInfo,
    BoardState,
    ColdStart,
    CpuStats,
    DeviceInfo,
    EnergyStats,
    MemoryStats,
    OpProfile,
    ProtocolSettings,
    ResultRecord,
    RunConfig,
    new_id,
    utc_now,
)


class RecordOptions(Protocol):
    """What a record says about the options it was measured with."""

    @property
    def protocol(self) -> ProtocolSettings: ...

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]: ...

    @property
    def inputs(self) -> Path | None: ...

    @property
    def isolate(self) -> bool: ...


def _config(
    options: RecordOptions,
    threads: int,
    batch: int,
    outcome: dict[str, Any] | None,
    artifact: ArtifactInfo,
    extra: dict[str, str] | None = None,
) -> RunConfig:
    outcome = outcome or {}
    try:
        runtime = outcome.get("runtime") or runtime_name(artifact.name)
    except Exception:
        runtime = "unknown"
    options_out = {str(k): str(v) for k, v in (outcome.get("options") or {}).items()}
    options_out["isolation"] = "fresh process" if options.isolate else "in-process"
    options_out.update(extra or {})
    shapes = outcome.get("input_shapes") or {k: list(v) for k, v in options.shapes.items()}
    return RunConfig(
        runtime=runtime,
        runtime_version=outcome.get("runtime_version", ""),
        threads=threads,
        batch=batch,
        input_shapes={k: tuple(v) for k, v in shapes.items()},
        input_source=outcome.get("input_source") or (options.inputs.name if options.inputs else "random"),
        options=options_out,
        protocol=options.protocol,
    )


def failed_record(
    device: DeviceInfo,
    artifact: ArtifactInfo,
    options: RecordOptions,
    threads: int,
    batch: int,
    started: str,
    error: str,
    job_id: str | None,
    *,
    status: str = "failed",
    outcome: dict[str, Any] | None = None,
) -> ResultRecord:
    cold = None
    if outcome and "load_ms" in outcome and "first_inference_ms" in outcome:
        cold = ColdStart(outcome["load_ms"], outcome["first_inference_ms"])
    return ResultRecord(
        result_id=new_id(),
        device=device,
        artifact=artifact,
        config=_config(options, threads, batch, outcome, artifact),
        status=status,  # type: ignore[arg-type]
        started_at=started,
        finished_at=utc_now(),
        error=" ".join(error.split()) or status,
        job_id=job_id,
        cold_start=cold,
    )


def _merge_boards(boards: list[BoardState]) -> BoardState:
    if len(boards) == 1:
        return boards[0]
    first, last = boards[0], boards[-1]
    temps = [b.temp_max_c for b in boards if b.temp_max_c is not None]
    bits = [b.throttled_bits for b in boards if b.throttled_bits is not None]
    combined = 0
    for b in bits:
        combined |= b
    return BoardState(
        temp_start_c=first.temp_start_c,
        temp_end_c=last.temp_end_c,
        temp_max_c=max(temps) if temps else None,
        temp_method=first.temp_method,
        freq_start_mhz=first.freq_start_mhz,
        freq_end_mhz=last.freq_end_mhz,
        freq_max_mhz=first.freq_max_mhz,
        governor=first.governor,
        throttled_now=any(b.throttled_now for b in boards) if bits else None,
        throttled_since_boot=any(b.throttled_since_boot for b in boards) if bits else None,
        throttled_bits=combined if bits else None,
        throttle_method=first.throttle_method,
        psi_cpu_some_avg10=last.psi_cpu_some_avg10,
        steal_pct=last.steal_pct,
        samples=tuple(s for b in boards for s in b.samples),
    )


def _merge_energy(energies: list[EnergyStats], counts: list[int]) -> EnergyStats:
    if len(energies) == 1:
        return energies[0]
    per = [
        (e.joules_per_inference, n)
        for e, n in zip(energies, counts, strict=False)
        if e.joules_per_inference is not None
    ]
    watts = [e.avg_power_w for e in energies if e.avg_power_w is not None]
    total_n = sum(n for _, n in per)
    return EnergyStats(
        method=energies[0].method,
        joules_per_inference=sum(j * n for j, n in per) / total_n if per and total_n else None,
        avg_power_w=sum(watts) / len(watts) if watts else None,
        note=energies[0].note + f" ({len(energies)} repeats)",
    )


def timed_samples(outcome: dict[str, Any]) -> Kept:
    """A worker outcome's timed samples: ``timed`` (:meth:`Kept.to_dict`), or an older worker's list
    ``samples_ns`` (every run)."""
    if "timed" in outcome:
        return Kept.from_dict(outcome["timed"])
    return Kept.of(outcome["samples_ns"])


def build_record(
    device: DeviceInfo,
    artifact: ArtifactInfo,
    options: RecordOptions,
    threads: int,
    batch: int,
    started: str,
    outcomes: list[dict[str, Any]],
    job_id: str | None,
    cooldown: str | None = None,
) -> ResultRecord:
    first = outcomes[0]
    parts = [timed_samples(o) for o in outcomes]
    samples = merge_kept(parts)
    counts = [p.n for p in parts]
    medians = [kept_percentile(p, 0.5) / NS_PER_MS for p in parts] if len(parts) > 1 else []
    boards = [decode(BoardState, o["board"]) for o in outcomes]
    board = _merge_boards(boards)
    latency = summarize(
        samples,
        items_per_run=batch,
        warmup_runs=len(first["warmup_ns"]),
        warmup_stable=all(o["warmup_stable"] for o in outcomes),
        throttled=board.throttled_now,
        repeat_medians_ms=medians,
        keep_samples=options.protocol.keep_samples,
    )
    cpus = [decode(CpuStats, o["cpu"]) for o in outcomes]
    user, system = sum(c.user_s for c in cpus), sum(c.system_s for c in cpus)
    extra = {"repeats": str(len(outcomes)), "samples": samples.describe()}
    stops = list(dict.fromkeys(o["stop"] for o in outcomes if o.get("stop")))
    if stops:
        extra["stop"] = "; ".join(stops)
    if cooldown:
        extra["cooldown"] = cooldown
    return ResultRecord(
        result_id=new_id(),
        device=device,
        artifact=artifact,
        config=_config(options, threads, batch, first, artifact, extra),
        status="ok",
        started_at=started,
        finished_at=utc_now(),
        job_id=job_id,
        cold_start=ColdStart(first["load_ms"], first["first_inference_ms"]),
        latency=latency,
        memory=decode(MemoryStats, first["memory"]),
        cpu=CpuStats(cpu_s_per_inference=(user + system) / max(sum(counts), 1), user_s=user, system_s=system),
        board=board,
        energy=_merge_energy([decode(EnergyStats, o["energy"]) for o in outcomes], counts),
        profile=tuple(decode(OpProfile, p) for p in first.get("profile") or ()),
    )
