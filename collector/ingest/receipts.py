"""End-to-end acknowledgement, the collector's half: after each commit, tell every device which of its
messages are now in the database (:class:`wire.schema.Receipt` on ``edgebench/v1/devices/<id>/receipts``).

A device deletes a result or job event from its outbox only on such a receipt, so what it was told is
delivered is committed here, whatever happened to the broker in between. Sent for every committed
message, a duplicate included (the device may have sent it again because an earlier receipt was lost),
and for every dead letter whose delivery key can be read (``rejected``: sending it again cannot help).
QoS 1 and not retained: a receipt that does not arrive only means the device sends the message again
after its timeout, and the primary keys absorb the copy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from collector.messages.parse import CHUNK_SHARE, Parsed
from wire import topics
from wire.receipts import event_key, loose_key, result_key
from wire.schema import JobEvent, Receipt, ReceiptRejection, ResultRecord, utc_now

log = logging.getLogger("edgebench.collector")

__all__ = ["MAX_KEYS_PER_RECEIPT", "build_receipts"]

MAX_KEYS_PER_RECEIPT = 2000  # ~100 KB of keys: well under every payload limit
_MAX_REASON = 300


def _device_and_leaf(topic: str) -> tuple[str, str] | None:
    try:
        return topics.parse_device_topic(topic.removeprefix(CHUNK_SHARE))
    except topics.TopicError:
        return None


def build_receipts(
    parsed: Sequence[Parsed],
    topics_: Sequence[str],
    payloads: Sequence[bytes],
    *,
    now: Callable[[], str] = utc_now,
) -> list[tuple[str, bytes]]:
    """(topic, payload) of the receipts for one committed batch, per device, in batch order."""
    committed: dict[str, list[str]] = {}
    rejected: dict[str, list[ReceiptRejection]] = {}
    for p, topic, payload in zip(parsed, topics_, payloads, strict=True):
        if p.kind == "result" and isinstance(p.message, ResultRecord):
            committed.setdefault(p.message.device.device_id, []).append(result_key(p.message.result_id))
        elif p.kind == "event" and isinstance(p.message, JobEvent):
            m = p.message
            committed.setdefault(m.device_id, []).append(event_key(m.job_id, m.state, m.at))
        elif p.kind == "dead":
            where = _device_and_leaf(topic)
            key = loose_key(where[1], payload) if where else None
            if where and key:
                rejected.setdefault(where[0], []).append(ReceiptRejection(key, p.reason[:_MAX_REASON]))
    out: list[tuple[str, bytes]] = []
    at = now()
    for device in dict.fromkeys([*committed, *rejected]):
        keys, bad = committed.get(device, []), rejected.get(device, [])
        for i in range(0, max(len(keys), len(bad)), MAX_KEYS_PER_RECEIPT):
            part = slice(i, i + MAX_KEYS_PER_RECEIPT)
            receipt = Receipt(device, at, tuple(keys[part]), tuple(bad[part]))
            out.append((topics.receipts(device), receipt.to_json().encode()))
    return out
