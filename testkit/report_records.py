"""Synthetic but schema-valid ResultRecords for report tests and bench/report_scale.py."""

from __future__ import annotations

import hashlib
import uuid

import numpy as np

from wire.schema import (
    AccuracyInfo,
    ArtifactInfo,
    BoardSample,
    BoardState,
    DeviceInfo,
    EnergyStats,
    LatencyStats,
    MemoryStats,
    ResultRecord,
    RunConfig,
)

VARIANTS = {  # variant -> (precision, format, size_bytes, speed factor vs fp32, peak MB, accuracy delta)
    "fp32": ("fp32", "onnx", 4_000_000, 1.0, 120.0, None),
    "fp16": ("fp16", "onnx", 2_000_000, 1.1, 100.0, -0.05),
    "int8-static": ("int8-static", "onnx", 1_000_000, 0.45, 70.0, -0.4),
    "int8-dynamic": ("int8-dynamic", "onnx", 1_000_000, 3.0, 75.0, -0.3),
    "tflite-int8": ("int8-static", "tflite", 1_050_000, 0.5, 60.0, -2.5),
}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_record(
    device_id: str,
    variant: str,
    *,
    base_ms: float = 10.0,
    n: int = 200,
    seed: int = 0,
    model: str = "digits-cnn",
    tags: tuple[str, ...] = (),
    threads: int = 4,
    started_at: str = "2024-05-01T10:00:00.000Z",
    finished_at: str = "2024-05-01T10:00:10.000Z",
    job_id: str | None = None,
    keep_samples: bool = True,
    status: str = "ok",
    with_accuracy: bool = True,
) -> ResultRecord:
    precision, fmt, size, factor, peak, delta = VARIANTS[variant]
    rng = np.random.default_rng(seed)
    samples = base_ms * factor * rng.lognormal(0.0, 0.05, n)
    lat = _latency(samples, n, keep_samples)
    board = BoardState(
        temp_start_c=50.0,
        temp_end_c=55.0,
        temp_max_c=56.0,
        temp_method="thermal_zone0",
        freq_start_mhz=1800.0,
        freq_end_mhz=1500.0,
        samples=tuple(
            BoardSample(
                t_s=float(t), temp_c=50.0 + t * 0.5 + rng.normal(0, 0.2), freq_mhz=1800.0 if t < 6 else 1500.0
            )
            for t in range(11)
        ),
    )
    ok = status == "ok"
    return ResultRecord(
        result_id=str(uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | seed)),
        device=DeviceInfo(device_id=device_id, board="Raspberry Pi 4 Model B", arch="aarch64", tags=tags),
        artifact=ArtifactInfo(
            name=f"{model}-{variant}.{fmt}",
            sha256=sha(model + variant),
            format=fmt,
            size_bytes=size,
            precision=precision,
            model=model,
            variant=variant,
        ),
        config=RunConfig(
            runtime="onnxruntime" if fmt == "onnx" else "litert", runtime_version="1.31.1", threads=threads
        ),
        status=status,  # type: ignore[arg-type]
        started_at=started_at,
        finished_at=finished_at,
        job_id=job_id,
        error=None if ok else "model failed to load",
        latency=lat if ok else None,
        memory=MemoryStats(method="proc-status-vmhwm", load_peak_mb=peak * 0.8, inference_peak_mb=peak)
        if ok
        else None,
        board=board if ok else None,
        energy=EnergyStats(method="hwmon:ina219", joules_per_inference=0.002 * factor, avg_power_w=4.0)
        if ok
        else None,
        accuracy=AccuracyInfo(metric="accuracy", value=99.0 + (delta or 0), delta=delta)
        if ok and with_accuracy and delta is not None
        else None,
    )


def _latency(samples: np.ndarray, n: int, keep_samples: bool) -> LatencyStats:
    """The LatencyStats of synthetic samples (as the agent's stats would report them)."""
    s = np.sort(samples)
    return LatencyStats(
        n=n,
        mean_ms=float(s.mean()),
        std_ms=float(s.std()),
        cv=float(s.std() / s.mean()),
        min_ms=float(s[0]),
        p50_ms=float(np.median(s)),
        p50_ci_low_ms=float(s[int(n * 0.45)]),
        p50_ci_high_ms=float(s[int(n * 0.55)]),
        p90_ms=float(np.quantile(s, 0.9)),
        p99_ms=float(np.quantile(s, 0.99)),
        max_ms=float(s[-1]),
        mad_ms=0.1,
        outliers=0,
        drift_pct=0.0,
        throughput_ips=1000.0 / float(s.mean()),
        warmup_runs=10,
        stable=True,
        samples_ms=tuple(float(x) for x in samples) if keep_samples else None,
    )
