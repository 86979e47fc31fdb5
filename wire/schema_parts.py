"""The parts of the wire format's messages (stdlib only): what a result record, a job and a device
status are made of. The messages themselves, and the strict JSON entry points, are in :mod:`wire.schema`,
which re-exports everything here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import pairwise
from typing import Literal

from wire.codec import SchemaError
from wire.timestamps import parse_wire

ModelFormat = Literal["onnx", "tflite", "unknown"]  # "unknown": only in failed records of unreadable files


def utc_now() -> str:
    """The current time as the wire's timestamp format (ISO-8601 UTC, milliseconds, ``Z``)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id() -> str:
    return str(uuid.uuid4())


def _check_uuid(value: str, name: str) -> None:
    try:
        uuid.UUID(value)
    except ValueError:
        raise SchemaError(f"not a UUID: {value!r}", name) from None


def _check_sha256(value: str, name: str) -> None:
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise SchemaError(f"not a lowercase hex sha256: {value!r}", name)


# ---------------------------------------------------------------- range and consistency rules
# Each rule raises SchemaError naming the field and the rule ("latency.p50_ms: must be > 0, got -1.0"),
# which the collector files as an "invalid-field" dead letter.

_ROUNDING = 1e-9  # relative slack for orderings of values computed in floating point


_LATENCIES = ("mean_ms", "min_ms", "p50_ms", "p50_ci_low_ms", "p50_ci_high_ms", "p90_ms", "p99_ms", "max_ms")
_MEMORY_SIZES = (
    "baseline_rss_mb",
    "after_import_rss_mb",
    "load_peak_mb",
    "inference_peak_mb",
    "rss_anon_mb",
    "rss_file_mb",
)


def _check_utc(value: str, name: str) -> None:
    """An ISO-8601 time in UTC (``2025-01-01T00:00:00.000Z`` or ``+00:00``), as :func:`utc_now` writes."""
    try:
        parse_wire(value)
    except ValueError:
        got = value[:40]
        raise SchemaError(f"must be an ISO-8601 time in UTC (Z or +00:00), got {got!r}", name) from None


def _check_min(obj: object, names: tuple[str, ...], low: float, strict: bool = False) -> None:
    """Every named field that is present (not None) is >= low (> low when strict)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and (value <= low if strict else value < low):
            raise SchemaError(f"must be {'>' if strict else '>='} {low:g}, got {value!r}", name)


def _check_order(obj: object, names: tuple[str, ...]) -> None:
    """The present fields among ``names`` are non-decreasing (up to float rounding)."""
    present = [(n, getattr(obj, n)) for n in names if getattr(obj, n) is not None]
    for (a, x), (b, y) in pairwise(present):
        if x > y * (1 + _ROUNDING):
            raise SchemaError(f"must be <= {b} ({y!r}), got {x!r}", a)


# ---------------------------------------------------------------- result record parts


@dataclass(frozen=True)
class DeviceInfo:
    device_id: str
    hostname: str = ""
    board: str = ""  # /proc/device-tree/model, DMI product name, or "unknown"
    arch: str = ""
    cpu_model: str = ""
    cpu_cores: int = 0
    ram_mb: float = 0.0
    os: str = ""
    kernel: str = ""
    python: str = ""
    agent_version: str = ""
    runtimes: dict[str, str] = field(default_factory=dict)  # runtime name -> version
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_min(self, ("cpu_cores", "ram_mb"), 0)


@dataclass(frozen=True)
class ArtifactInfo:
    name: str
    sha256: str
    format: ModelFormat
    size_bytes: int
    precision: str = "fp32"  # fp32, fp16, int8-dynamic, int8-static, ...
    model: str = ""  # the source model this artifact was made from (family name)
    variant: str = ""  # the converter's variant name, e.g. "onnx-int8-static"

    def __post_init__(self) -> None:
        _check_sha256(self.sha256, "sha256")
        if self.size_bytes < 0:
            raise SchemaError("must be >= 0", "size_bytes")


# The fewest timed runs that make a percentile a claim: the MLPerf inference rules' early-stopping minimum
# query counts (p90 needs 64, p99 needs 662). Below its floor a record leaves the percentile None, and a
# reader shows it as unsupported ("n<662"), also for older records that still carry a value.
PERCENTILE_FLOORS: dict[str, int] = {"p90_ms": 64, "p99_ms": 662}


def percentile_supported(name: str, n: int) -> bool:
    """Whether ``n`` samples support the percentile field ``name`` ("p90_ms", "p99_ms"; others: n >= 1)."""
    return n >= PERCENTILE_FLOORS.get(name, 1)


@dataclass(frozen=True)
class ProtocolSettings:
    preset: str = "default"
    warmup_min_runs: int = 10
    warmup_window: int = 10
    warmup_tolerance: float = 0.05
    warmup_max_s: float = 10.0
    min_runs: int = 100
    min_time_s: float = 10.0
    max_runs: int = 0  # 0: no run cap (the loop ends at the floors or at max_time_s); older agents: 10000
    max_time_s: float = 60.0
    repeats: int = 1
    keep_samples: bool = True


@dataclass(frozen=True)
class RunConfig:
    runtime: str  # "onnxruntime" | "litert" | "tflite-runtime"
    runtime_version: str
    threads: int
    batch: int = 1
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    input_source: str = "random"  # "random" or the data file's name
    options: dict[str, str] = field(default_factory=dict)  # e.g. graph_optimization_level, xnnpack
    protocol: ProtocolSettings = field(default_factory=ProtocolSettings)

    def __post_init__(self) -> None:
        _check_min(self, ("threads",), 0)  # 0: the runtime's default
        _check_min(self, ("batch",), 1)


@dataclass(frozen=True)
class ColdStart:
    load_ms: float
    first_inference_ms: float

    def __post_init__(self) -> None:
        _check_min(self, ("load_ms", "first_inference_ms"), 0)


@dataclass(frozen=True)
class LatencyStats:
    n: int
    mean_ms: float
    std_ms: float
    cv: float
    min_ms: float
    p50_ms: float
    p50_ci_low_ms: float | None
    p50_ci_high_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float
    mad_ms: float
    outliers: int
    drift_pct: float | None
    throughput_ips: float
    warmup_runs: int
    stable: bool
    verdict: str = ""
    repeat_medians_ms: tuple[float, ...] = ()
    samples_ms: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        _check_min(self, ("n",), 1)
        _check_min(self, _LATENCIES, 0.0, strict=True)
        _check_min(self, ("std_ms", "cv", "mad_ms", "outliers", "warmup_runs", "throughput_ips"), 0)
        _check_order(self, ("min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms"))
        _check_order(self, ("p50_ci_low_ms", "p50_ms", "p50_ci_high_ms"))
        if self.outliers > self.n:
            raise SchemaError(f"must be <= n ({self.n}), got {self.outliers}", "outliers")
        if self.repeat_medians_ms and min(self.repeat_medians_ms) <= 0:
            raise SchemaError(f"must be > 0, got {min(self.repeat_medians_ms)!r}", "repeat_medians_ms")


@dataclass(frozen=True)
class MemoryStats:
    method: str  # e.g. "proc-status-vmhwm (fresh process)", "psutil", "unavailable"
    baseline_rss_mb: float | None = None
    after_import_rss_mb: float | None = None
    load_peak_mb: float | None = None
    inference_peak_mb: float | None = None
    rss_anon_mb: float | None = None
    rss_file_mb: float | None = None
    growth_mb: float | None = None  # may be negative: the process gave memory back

    def __post_init__(self) -> None:
        _check_min(self, _MEMORY_SIZES, 0)


@dataclass(frozen=True)
class CpuStats:
    cpu_s_per_inference: float
    user_s: float
    system_s: float

    def __post_init__(self) -> None:
        _check_min(self, ("cpu_s_per_inference", "user_s", "system_s"), 0)


@dataclass(frozen=True)
class BoardSample:
    t_s: float  # seconds since the timed runs started
    temp_c: float | None = None
    freq_mhz: float | None = None
    power_w: float | None = None
    throttled: int | None = None


@dataclass(frozen=True)
class BoardState:
    temp_start_c: float | None = None
    temp_end_c: float | None = None
    temp_max_c: float | None = None
    temp_method: str = "unavailable"
    freq_start_mhz: float | None = None
    freq_end_mhz: float | None = None
    freq_max_mhz: float | None = None
    governor: str | None = None
    throttled_now: bool | None = None
    throttled_since_boot: bool | None = None
    throttled_bits: int | None = None
    throttle_method: str = "unavailable"
    psi_cpu_some_avg10: float | None = None
    steal_pct: float | None = None
    samples: tuple[BoardSample, ...] = ()


@dataclass(frozen=True)
class EnergyStats:
    method: str  # "rapl", "hwmon:ina219", "vcgencmd-pmic", or "unavailable"
    joules_per_inference: float | None = None
    avg_power_w: float | None = None
    note: str = ""

    def __post_init__(self) -> None:
        _check_min(self, ("joules_per_inference", "avg_power_w"), 0)


@dataclass(frozen=True)
class AccuracyInfo:
    metric: str  # "accuracy", "top1_agreement", ...
    value: float
    reference: float | None = None
    delta: float | None = None
    dataset: str = ""


@dataclass(frozen=True)
class OpProfile:
    op_type: str
    node: str
    mean_ms: float
    share: float  # 0..1 of the profiled time
    provider: str = ""  # e.g. CPUExecutionProvider, XNNPACK delegate

    def __post_init__(self) -> None:
        _check_min(self, ("mean_ms", "share"), 0)
        if self.share > 1 + _ROUNDING:
            raise SchemaError(f"must be <= 1 (a share of the profiled time), got {self.share!r}", "share")


# ---------------------------------------------------------------- jobs


@dataclass(frozen=True)
class ArtifactRef:
    """An artifact a job needs, named by content; fetched over MQTT unless cached."""

    name: str
    sha256: str
    size_bytes: int
    format: ModelFormat
    precision: str = "fp32"
    model: str = ""
    variant: str = ""

    def __post_init__(self) -> None:
        _check_sha256(self.sha256, "sha256")
        if self.size_bytes <= 0:
            raise SchemaError("must be > 0", "size_bytes")


@dataclass(frozen=True)
class BenchSettings:
    preset: str = "default"  # "quick", "default", "thorough"
    threads: tuple[int, ...] = ()  # empty: the device's default; several: a sweep
    batch: int = 1
    min_runs: int | None = None
    min_time_s: float | None = None
    max_time_s: float | None = None
    repeats: int = 1
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    profile_ops: bool = False
    cooldown_c: float | None = None
