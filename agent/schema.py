"""The edgebench wire format, version 1 (stdlib only).

Every message is a frozen dataclass that carries ``schema_version``. ``to_json`` / ``from_json``
are strict: an unknown schema version, a missing, unknown or mistyped field raises
:class:`SchemaError` naming the field. Units are in the field names (``_ms``, ``_mb``, ``_c``...).
Timestamps are ISO-8601 UTC strings with a ``Z`` suffix (see :func:`utc_now`), which sort as text.

Messages (topics in :mod:`agent.topics`):

* :class:`ResultRecord` - one benchmark of one artifact on one device (device -> collector).
* :class:`Job` / :class:`CancelJob` - what to run (collector -> devices), signed.
* :class:`JobEvent` - a job's lifecycle on one device (device -> collector).
* :class:`DeviceStatus` - birth, heartbeat and last-will messages (device -> collector, retained).
* :class:`ChunkRequest` / :class:`ArtifactChunk` - model delivery over MQTT.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, ClassVar, Literal, TypeVar

from agent.codec import SchemaError, decode, encode

__all__ = [
    "SCHEMA_VERSION",
    "SchemaError",
    "ArtifactChunk",
    "ArtifactInfo",
    "ArtifactRef",
    "AccuracyInfo",
    "BenchSettings",
    "BoardSample",
    "BoardState",
    "CancelJob",
    "ChunkRequest",
    "ColdStart",
    "CpuStats",
    "DeviceInfo",
    "DeviceStatus",
    "EnergyStats",
    "Job",
    "JobEvent",
    "LatencyStats",
    "MemoryStats",
    "OpProfile",
    "ProtocolSettings",
    "ResultRecord",
    "RunConfig",
    "new_id",
    "parse_message",
    "utc_now",
]

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})

ModelFormat = Literal["onnx", "tflite", "unknown"]  # "unknown": only in failed records of unreadable files
ResultStatus = Literal["ok", "failed", "aborted"]
JobState = Literal[
    "received", "fetching", "verifying", "running", "done", "failed", "rejected", "cancelled", "aborted"
]
DeviceState = Literal["online", "offline"]

M = TypeVar("M", bound="_Message")


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


class _Message:
    """Mixin for top-level messages: versioned, strict JSON."""

    KIND: ClassVar[str]
    schema_version: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.KIND, **encode(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls: type[M], data: Any) -> M:
        if not isinstance(data, dict):
            raise SchemaError(f"a {cls.KIND} message must be a JSON object")
        version = data.get("schema_version")
        if "schema_version" not in data:
            raise SchemaError("missing required field", "schema_version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise SchemaError(f"expected an integer, got {version!r}", "schema_version")
        if version not in SUPPORTED_VERSIONS:
            raise SchemaError(
                f"unsupported schema version {version} (this build reads {sorted(SUPPORTED_VERSIONS)})",
                "schema_version",
            )
        body = dict(data)
        kind = body.pop("kind", cls.KIND)
        if kind != cls.KIND:
            raise SchemaError(f"expected kind {cls.KIND!r}, got {kind!r}", "kind")
        return decode(cls, body)

    @classmethod
    def from_json(cls: type[M], text: str | bytes) -> M:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SchemaError(f"not valid JSON: {exc}") from None
        return cls.from_dict(data)


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


@dataclass(frozen=True)
class ProtocolSettings:
    preset: str = "default"
    warmup_min_runs: int = 10
    warmup_window: int = 10
    warmup_tolerance: float = 0.05
    warmup_max_s: float = 10.0
    min_runs: int = 100
    min_time_s: float = 10.0
    max_runs: int = 10000
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


@dataclass(frozen=True)
class ColdStart:
    load_ms: float
    first_inference_ms: float


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


@dataclass(frozen=True)
class MemoryStats:
    method: str  # e.g. "proc-status-vmhwm (fresh process)", "psutil", "unavailable"
    baseline_rss_mb: float | None = None
    after_import_rss_mb: float | None = None
    load_peak_mb: float | None = None
    inference_peak_mb: float | None = None
    rss_anon_mb: float | None = None
    rss_file_mb: float | None = None
    growth_mb: float | None = None


@dataclass(frozen=True)
class CpuStats:
    cpu_s_per_inference: float
    user_s: float
    system_s: float


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


@dataclass(frozen=True)
class ResultRecord(_Message):
    KIND: ClassVar[str] = "result"
    result_id: str
    device: DeviceInfo
    artifact: ArtifactInfo
    config: RunConfig
    status: ResultStatus
    started_at: str
    finished_at: str
    schema_version: int = SCHEMA_VERSION
    error: str | None = None
    job_id: str | None = None
    cold_start: ColdStart | None = None
    latency: LatencyStats | None = None
    memory: MemoryStats | None = None
    cpu: CpuStats | None = None
    board: BoardState | None = None
    energy: EnergyStats | None = None
    accuracy: AccuracyInfo | None = None
    profile: tuple[OpProfile, ...] = ()

    def __post_init__(self) -> None:
        _check_uuid(self.result_id, "result_id")
        if self.status == "ok" and self.latency is None:
            raise SchemaError("a result with status 'ok' must carry latency", "latency")
        if self.status != "ok" and not self.error:
            raise SchemaError(f"a result with status {self.status!r} must say why", "error")


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


@dataclass(frozen=True)
class Job(_Message):
    KIND: ClassVar[str] = "job"
    job_id: str
    created_at: str
    target: str  # "device:<id>", "tag:<tag>" or "all"
    artifacts: tuple[ArtifactRef, ...]
    settings: BenchSettings = field(default_factory=BenchSettings)
    schema_version: int = SCHEMA_VERSION
    expires_at: str | None = None
    key_id: str = ""  # which signing key; empty for unsigned
    signature: str = ""  # base64 Ed25519 over signing_bytes()

    def __post_init__(self) -> None:
        _check_uuid(self.job_id, "job_id")
        if not self.artifacts:
            raise SchemaError("a job needs at least one artifact", "artifacts")
        if not (self.target == "all" or self.target.startswith(("device:", "tag:"))):
            raise SchemaError(f"must be 'all', 'device:<id>' or 'tag:<tag>', got {self.target!r}", "target")

    def signing_bytes(self) -> bytes:
        """Canonical bytes covered by the signature (everything but key_id and signature)."""
        body = self.to_dict()
        body.pop("signature")
        body.pop("key_id")
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, key_id: str, signature: str) -> Job:
        return replace(self, key_id=key_id, signature=signature)


@dataclass(frozen=True)
class CancelJob(_Message):
    KIND: ClassVar[str] = "cancel"
    job_id: str
    created_at: str
    schema_version: int = SCHEMA_VERSION
    key_id: str = ""
    signature: str = ""

    def signing_bytes(self) -> bytes:
        body = self.to_dict()
        body.pop("signature")
        body.pop("key_id")
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, key_id: str, signature: str) -> CancelJob:
        return replace(self, key_id=key_id, signature=signature)


@dataclass(frozen=True)
class JobEvent(_Message):
    KIND: ClassVar[str] = "job_event"
    job_id: str
    device_id: str
    state: JobState
    at: str
    schema_version: int = SCHEMA_VERSION
    detail: str = ""
    result_ids: tuple[str, ...] = ()
    progress: float | None = None  # 0..1 while fetching or running


# ---------------------------------------------------------------- device status


@dataclass(frozen=True)
class DeviceStatus(_Message):
    KIND: ClassVar[str] = "status"
    device_id: str
    state: DeviceState
    at: str
    schema_version: int = SCHEMA_VERSION
    reason: str = ""  # "birth", "heartbeat", "last-will", "shutdown"
    facts: DeviceInfo | None = None
    tags: tuple[str, ...] = ()
    current_job: str | None = None
    outbox_pending: int | None = None
    outbox_dropped: int | None = None
    uptime_s: float | None = None


# ---------------------------------------------------------------- model delivery


@dataclass(frozen=True)
class ChunkRequest(_Message):
    """A device asks for chunks of an artifact (all of them, or the missing ones to resume)."""

    KIND: ClassVar[str] = "chunk_request"
    device_id: str
    sha256: str
    indices: tuple[int, ...] = ()  # empty: every chunk
    chunk_size: int = 256 * 1024
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_sha256(self.sha256, "sha256")
        if self.chunk_size <= 0:
            raise SchemaError("must be > 0", "chunk_size")


@dataclass(frozen=True)
class ArtifactChunk:
    """One piece of an artifact. Binary on the wire: a JSON header line, a newline, the raw bytes."""

    sha256: str
    index: int
    total: int
    size_bytes: int  # of the whole artifact
    data: bytes
    schema_version: int = SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        header = {
            "kind": "chunk",
            "schema_version": self.schema_version,
            "sha256": self.sha256,
            "index": self.index,
            "total": self.total,
            "size_bytes": self.size_bytes,
            "length": len(self.data),
        }
        return json.dumps(header, separators=(",", ":")).encode() + b"\n" + self.data

    @classmethod
    def from_bytes(cls, payload: bytes) -> ArtifactChunk:
        head, sep, data = payload.partition(b"\n")
        if not sep:
            raise SchemaError("a chunk needs a JSON header line")
        try:
            header = json.loads(head)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SchemaError(f"chunk header is not valid JSON: {exc}") from None
        if not isinstance(header, dict):
            raise SchemaError("chunk header must be a JSON object")
        if header.get("kind") != "chunk":
            raise SchemaError(f"expected kind 'chunk', got {header.get('kind')!r}", "kind")
        version = header.get("schema_version")
        if version not in SUPPORTED_VERSIONS:
            raise SchemaError(f"unsupported schema version {version!r}", "schema_version")
        for name in ("index", "total", "size_bytes", "length"):
            value = header.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SchemaError(f"expected a non-negative integer, got {value!r}", name)
        sha = header.get("sha256")
        if not isinstance(sha, str):
            raise SchemaError("expected a string", "sha256")
        _check_sha256(sha, "sha256")
        if header["length"] != len(data):
            raise SchemaError(f"header says {header['length']} bytes, payload has {len(data)}", "length")
        if header["index"] >= header["total"]:
            raise SchemaError(f"index {header['index']} out of range for {header['total']} chunks", "index")
        return cls(sha, header["index"], header["total"], header["size_bytes"], data, version)


_BY_KIND: dict[str, type[_Message]] = {
    cls.KIND: cls for cls in (ResultRecord, Job, CancelJob, JobEvent, DeviceStatus, ChunkRequest)
}


def parse_message(payload: str | bytes) -> _Message:
    """Decode any JSON message by its ``kind`` field."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SchemaError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SchemaError("a message must be a JSON object")
    kind = data.get("kind")
    if kind not in _BY_KIND:
        raise SchemaError(f"unknown message kind {kind!r} (known: {', '.join(sorted(_BY_KIND))})", "kind")
    return _BY_KIND[kind].from_dict(data)
