"""Delivery keys: how a device and the collector name one message for the end-to-end acknowledgement.

A device keeps every result and job event in its outbox until a :class:`~wire.schema.Receipt` from
the collector lists the message's key as committed (or rejected). Both sides derive the key from the
message's own identity, the same columns that make the collector's writes idempotent:

* a result: ``r:<result_id>`` (the results table's primary key);
* a job event: ``e:<job_id>:<state>:<at>`` (the job_events unique index, per device).

Stdlib only: the agent derives keys from the payload it is about to store
(:func:`key_for_payload`), the collector from what it parsed or, for a dead letter, from whatever
of the identity it can read (:func:`loose_key`).
"""

from __future__ import annotations

import json
from typing import Any

from wire import topics

__all__ = ["event_key", "key_for_payload", "loose_key", "result_key"]

_MAX_LOOSE_BYTES = 1024 * 1024


def result_key(result_id: str) -> str:
    return f"r:{result_id}"


def event_key(job_id: str, state: str, at: str) -> str:
    return f"e:{job_id}:{state}:{at}"


def _key_from_dict(leaf: str, data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    if leaf == "results":
        rid = data.get("result_id")
        return result_key(rid) if isinstance(rid, str) and rid else None
    if leaf == "events":
        parts = [data.get("job_id"), data.get("state"), data.get("at")]
        if all(isinstance(v, str) and v for v in parts):
            return event_key(*parts)
    return None


def key_for_payload(topic: str, payload: bytes) -> str | None:
    """The key of a result or job event the device is about to send; None for anything else
    (such messages leave the outbox on the broker's PUBACK)."""
    try:
        _device, leaf = topics.parse_device_topic(topic)
    except topics.TopicError:
        return None
    if leaf not in ("results", "events"):
        return None
    return loose_key(leaf, payload)


def loose_key(leaf: str, payload: bytes) -> str | None:
    """Best effort, never raises: the key of a payload that may not even be valid JSON."""
    if leaf not in ("results", "events") or len(payload) > _MAX_LOOSE_BYTES:
        return None
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError, UnicodeDecodeError, TypeError):
        return None
    return _key_from_dict(leaf, data)
