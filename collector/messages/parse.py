"""Parsing what arrives from the fleet: one MQTT message -> a validated wire-format message or a dead letter.

Pure (no I/O): :func:`parse` checks the size, the topic, the JSON against :mod:`wire.schema` (through
the msgspec fast path of :mod:`collector.messages.fastcodec`) and that the device in the message is the
device in the topic. Every failure is a :class:`Parsed` of kind "dead" with ``"<class>: <detail>"``,
the class one of :data:`DEAD_CLASSES`. Any byte string on any topic: the JSON is decoded by
:func:`wire.codec.load_json` (UTF-8 only, bounded depth, no duplicate keys, ...), the same decoder
the agent uses, and an exception the checks did not foresee is an "internal-error" dead letter,
never a stopped collector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from collector.messages.fastcodec import decode_json
from wire import topics
from wire.codec import SchemaError
from wire.schema import ChunkRequest, DeviceStatus, JobEvent, ResultRecord

__all__ = ["CHUNK_SHARE", "DEAD_CLASSES", "Parsed", "parse", "schema_error_class"]

CHUNK_SHARE = "$share/edgebench-chunks/"  # collector and `fleet push` share chunk requests


@dataclass(frozen=True)
class Parsed:
    kind: str  # "result" | "status" | "event" | "chunk_request" | "drop" (counted) | "dead"
    message: Any = None
    text: str = ""  # results: the validated JSON as received
    reason: str = ""  # dead letters: "<class>: <detail>"


DEAD_CLASSES = (
    "oversize",
    "bad-json",
    "unknown-schema-version",
    "missing-field",
    "invalid-field",
    "topic-mismatch",
    "unknown-topic",
    "store-error",
    "internal-error",  # a bug: the parser raised; the message is kept as a dead letter
)


def schema_error_class(exc: SchemaError) -> str:
    """The dead-letter class of a schema error: its ``reason`` (one of ``wire.codec.SCHEMA_REASONS``)."""
    return exc.reason


_LEAVES: dict[str, type] = {
    "results": ResultRecord,
    "status": DeviceStatus,
    "events": JobEvent,
    "chunks/request": ChunkRequest,
}
_KINDS = {"results": "result", "status": "status", "events": "event", "chunks/request": "chunk_request"}


def parse(topic: str, payload: bytes, max_bytes: int) -> Parsed:
    """Validate one message against the wire format and its topic. Never raises."""
    try:
        return _parse(topic, payload, max_bytes)
    except Exception as exc:  # whatever it is, one message must not stop the service
        return Parsed("dead", reason=f"internal-error: {type(exc).__name__}: {str(exc)[:200]}")


def _parse(topic: str, payload: bytes, max_bytes: int) -> Parsed:
    if len(payload) > max_bytes:
        return Parsed("dead", reason=f"oversize: {len(payload)} bytes > limit {max_bytes}")
    try:
        device_id, leaf = topics.parse_device_topic(topic.removeprefix(CHUNK_SHARE))
    except topics.TopicError as exc:
        return Parsed("dead", reason=f"unknown-topic: {exc}")
    cls = _LEAVES.get(leaf)
    if cls is None:
        return Parsed("dead", reason=f"unknown-topic: no handler for leaf {leaf!r}")
    if leaf == "status" and not payload:
        return Parsed("drop", reason="empty status: a retained status being cleared")  # counted, not kept
    try:
        message = decode_json(cls, payload)
    except SchemaError as exc:
        return Parsed("dead", reason=f"{schema_error_class(exc)}: {exc}")
    claimed = message.device.device_id if isinstance(message, ResultRecord) else message.device_id
    if claimed != device_id:
        return Parsed(
            "dead", reason=f"topic-mismatch: topic device {device_id!r}, message device {claimed!r}"
        )
    text = payload.decode() if isinstance(message, ResultRecord) else ""
    return Parsed(_KINDS[leaf], message, text)
