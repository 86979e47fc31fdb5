"""The one place the service calls the measurement engine (imported only when a job runs)."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

from wire.schema import ArtifactInfo, ArtifactRef, DeviceInfo, Job, ResultRecord

__all__ = ["run_measurement"]


def run_measurement(
    path: Path,
    job: Job,
    ref: ArtifactRef,
    device: DeviceInfo,
    cancel: threading.Event,
    *,
    max_threads: int = 0,
) -> list[ResultRecord]:
    """Measure one artifact of ``job`` in fresh worker processes (``agent.measure.bench``, ``isolate``).

    ``max_threads`` is the device's own limit ([jobs] max_threads): a job asking for more threads, or
    for the runtime's default, runs with at most that many.
    """
    from agent.measure.bench import BenchOptions, run_benchmark

    artifact = ArtifactInfo(
        name=ref.name,
        sha256=ref.sha256,
        format=ref.format,
        size_bytes=ref.size_bytes,
        precision=ref.precision,
        model=ref.model,
        variant=ref.variant,
    )
    options = BenchOptions.from_settings(job.settings)
    if max_threads > 0:
        capped = tuple(sorted({min(t, max_threads) for t in options.threads})) or (max_threads,)
        options = replace(options, threads=capped)
    return run_benchmark(path, options, device=device, artifact=artifact, job_id=job.job_id, cancel=cancel)
