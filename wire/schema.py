"""The edgebench wire format, version 1 (stdlib only).

Every message is a frozen dataclass that carries ``schema_version``. ``to_json`` / ``from_json``
are strict: an unknown schema version, a missing, unknown or mistyped field raises
:class:`SchemaError` naming the field. Units are in the field names (``_ms``, ``_mb``, ``_c``...).
Timestamps are ISO-8601 UTC strings with a ``Z`` suffix (see :func:`utc_now`), which sort as text.

Messages (topics in :mod:`wire.topics`):

* :class:`ResultRecord` - one benchmark of one artifact on one device (device -> collector).
* :class:`Job` / :class:`CancelJob` - what to run (collector -> devices), signed.
* :class:`JobEvent` - a job's lifecycle on one device (device -> collector).
* :class:`DeviceStatus` - birth, heartbeat and last-will messages (device -> collector, retained).
* :class:`ChunkRequest` / :class:`ArtifactChunk` - model delivery over MQTT.
* :class:`Receipt` - what the collector committed to its database (collector -> device): the
  end-to-end acknowledgement. Keys are :mod:`wire.receipts` delivery keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, TypeVar

from wire.codec import SchemaError, decode, encode, load_json
from wire.schema_parts import (
    PERCENTILE_FLOORS,
    AccuracyInfo,
    ArtifactInfo,
    ArtifactRef,
    BenchSettings,
    BoardSample,
    BoardState,
    ColdStart,
    CpuStats,
    DeviceInfo,
    EnergyStats,
    LatencyStats,
    MemoryStats,
    OpProfile,
    ProtocolSettings,
    RunConfig,
    _check_min,
    _check_sha256,
    _check_utc,
    _check_uuid,
    new_id,
    percentile_supported,
    utc_now,
)

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
    "PERCENTILE_FLOORS",
    "ProtocolSettings",
    "Receipt",
    "ReceiptRejection",
    "ResultRecord",
    "RunConfig",
    "new_id",
    "parse_message",
    "percentile_supported",
    "utc_now",
]

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})

ResultStatus = Literal["ok", "failed", "aborted"]
JobState = Literal[
    "received", "fetching", "verifying", "running", "done", "failed", "rejected", "cancelled", "aborted"
]
DeviceState = Literal["online", "offline"]

M = TypeVar("M", bound="_Message")


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
            raise SchemaError(f"a {cls.KIND} message must be a JSON object", reason="bad-json")
        version = data.get("schema_version")
        if "schema_version" not in data:
            raise SchemaError("missing required field", "schema_version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise SchemaError(f"expected an integer, got {version!r}", "schema_version")
        if version not in SUPPORTED_VERSIONS:
            raise SchemaError(
                f"unsupported schema version {version} (this build reads {sorted(SUPPORTED_VERSIONS)})",
                "schema_version",
                "unknown-schema-version",
            )
        body = dict(data)
        kind = body.pop("kind", cls.KIND)
        if kind != cls.KIND:
            raise SchemaError(f"expected kind {cls.KIND!r}, got {kind!r}", "kind")
        return decode(cls, body)

    @classmethod
    def from_json(cls: type[M], text: str | bytes) -> M:
        return cls.from_dict(load_json(text))


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
        _check_utc(self.started_at, "started_at")
        _check_utc(self.finished_at, "finished_at")
        if self.status == "ok" and self.latency is None:
            raise SchemaError("a result with status 'ok' must carry latency", "latency")
        if self.status != "ok" and not self.error:
            raise SchemaError(f"a result with status {self.status!r} must say why", "error")


# ---------------------------------------------------------------- jobs


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

    def __post_init__(self) -> None:  # ``at`` is part of the event's delivery key: kept as sent
        if self.progress is not None and not 0.0 <= self.progress <= 1.0:
            raise SchemaError(f"must be between 0 and 1, got {self.progress!r}", "progress")


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
    outbox_pending: int | None = None  # not yet acknowledged: in the outbox, or held in memory (full disk)
    outbox_dropped: int | None = None
    uptime_s: float | None = None

    def __post_init__(self) -> None:
        _check_utc(self.at, "at")
        _check_min(self, ("outbox_pending", "outbox_dropped", "uptime_s"), 0)


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
            header = load_json(head)
        except SchemaError as exc:
            raise SchemaError(f"chunk header is {exc}") from None
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


# ---------------------------------------------------------------- end-to-end acknowledgement


@dataclass(frozen=True)
class ReceiptRejection:
    """A message the collector stored as a dead letter: sending it again cannot help."""

    key: str
    reason: str


@dataclass(frozen=True)
class Receipt(_Message):
    """The collector has committed these messages of ``device_id`` (results, job events) to its
    database: the device may delete them from its outbox. Sent after every commit, QoS 1. Agents that
    predate receipts do not subscribe to them and are served as before (PUBACK only)."""

    KIND: ClassVar[str] = "receipt"
    device_id: str
    at: str
    committed: tuple[str, ...] = ()
    rejected: tuple[ReceiptRejection, ...] = ()
    schema_version: int = SCHEMA_VERSION


_BY_KIND: dict[str, type[_Message]] = {
    cls.KIND: cls for cls in (ResultRecord, Job, CancelJob, JobEvent, DeviceStatus, ChunkRequest, Receipt)
}


def parse_message(payload: str | bytes) -> _Message:
    """Decode any JSON message by its ``kind`` field."""
    data = load_json(payload)
    if not isinstance(data, dict):
        raise SchemaError("a message must be a JSON object", reason="bad-json")
    kind = data.get("kind")
    if kind not in _BY_KIND:
        raise SchemaError(f"unknown message kind {kind!r} (known: {', '.join(sorted(_BY_KIND))})", "kind")
    return _BY_KIND[kind].from_dict(data)
