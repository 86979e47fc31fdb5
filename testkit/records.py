"""Build valid wire messages for collector tests and benchmarks (no randomness unless asked)."""

from __future__ import annotations

import uuid

from wire.schema import (
    ArtifactInfo,
    BoardState,
    ColdStart,
    CpuStats,
    DeviceInfo,
    DeviceStatus,
    EnergyStats,
    LatencyStats,
    MemoryStats,
    ResultRecord,
    RunConfig,
)

SHA = "ab" * 32


def make_record(
    device_id: str = "dev-1",
    *,
    result_id: str | None = None,
    model: str = "mlp",
    sha256: str = SHA,
    precision: str = "fp32",
    p50_ms: float = 1.5,
    job_id: str | None = None,
    status: str = "ok",
    finished_at: str = "2025-01-01T00:00:01.000Z",
) -> ResultRecord:
    latency = LatencyStats(
        n=100,
        mean_ms=p50_ms * 1.05,
        std_ms=0.1,
        cv=0.05,
        min_ms=p50_ms * 0.9,
        p50_ms=p50_ms,
        p50_ci_low_ms=p50_ms * 0.98,
        p50_ci_high_ms=p50_ms * 1.02,
        p90_ms=p50_ms * 1.2,
        p99_ms=p50_ms * 1.5,
        max_ms=p50_ms * 2,
        mad_ms=0.05,
        outliers=1,
        drift_pct=0.3,
        throughput_ips=1000 / p50_ms,
        warmup_runs=10,
        stable=True,
    )
    return ResultRecord(
        result_id=result_id or str(uuid.uuid4()),
        device=DeviceInfo(device_id=device_id, board="test board", arch="x86_64", cpu_cores=2),
        artifact=ArtifactInfo(
            name=f"{model}-{precision}.onnx",
            sha256=sha256,
            format="onnx",
            size_bytes=1234,
            precision=precision,
            model=model,
            variant=f"onnx-{precision}",
        ),
        config=RunConfig(runtime="onnxruntime", runtime_version="1.31.1", threads=1),
        status=status,
        error=None if status == "ok" else "boom",
        started_at="2025-01-01T00:00:00.000Z",
        finished_at=finished_at,
        job_id=job_id,
        cold_start=ColdStart(load_ms=12.0, first_inference_ms=3.0),
        latency=latency if status == "ok" else None,
        memory=MemoryStats(method="psutil", load_peak_mb=80.0, inference_peak_mb=90.0),
        cpu=CpuStats(cpu_s_per_inference=0.001, user_s=0.1, system_s=0.01),
        board=BoardState(temp_start_c=40.0, temp_max_c=55.0, temp_end_c=50.0, throttled_now=False),
        energy=EnergyStats(method="unavailable"),
    )


def make_status(
    device_id: str = "dev-1",
    state: str = "online",
    at: str = "2025-01-01T00:00:00.000Z",
    reason: str = "birth",
    tags: tuple[str, ...] = ("lab",),
    facts: bool = True,
) -> DeviceStatus:
    return DeviceStatus(
        device_id=device_id,
        state=state,
        at=at,
        reason=reason,
        tags=tags,
        facts=DeviceInfo(device_id=device_id, hostname=device_id, board="test board", tags=tags)
        if facts
        else None,
    )
