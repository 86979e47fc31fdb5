"""What every outbox is: the :class:`Outbox` protocol, its rows and stats, its errors, the put checks.

The design (receipts, bounds, full disk) is in :mod:`agent.delivery.outbox`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from wire.errors import EdgebenchError

__all__ = ["Outbox", "OutboxError", "OutboxFull", "OutboxRow", "OutboxStats", "check_put"]


class OutboxError(EdgebenchError):
    """The outbox cannot take a message (too large) or its file is unusable."""


class OutboxFull(OutboxError):
    """The disk (or the file system holding the outbox) is full: nothing was stored, retry later.

    Rows stored before stay intact (SQLite rolls the failed transaction back)."""


@dataclass(frozen=True)
class OutboxRow:
    id: int
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    key: str | None = None  # delivery key: the row waits for the collector's receipt


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    dropped: int  # pushed out by the size bound
    rejected: int  # refused by the broker (reason code), kept aside
    acked: int  # left after a PUBACK (rows without a key) or a receipt (committed by the collector)
    last_reject_reason: str = ""
    unconfirmed: int = 0  # of pending: PUBACKed by the broker, no receipt from the collector yet


class Outbox(Protocol):
    max_rows: int
    max_payload_bytes: int

    def put(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, key: str | None = None
    ) -> int: ...
    def pending(self, after_id: int = 0, limit: int = 1000) -> list[OutboxRow]: ...
    def rows(self, row_ids: list[int]) -> list[OutboxRow]: ...
    def ack(self, row_id: int) -> bool: ...
    def mark_sent(self, row_id: int) -> bool: ...
    def confirm(self, keys: list[str]) -> list[int]: ...
    def reject(self, row_id: int, reason: str) -> bool: ...
    def reject_keys(self, rejections: list[tuple[str, str]]) -> list[int]: ...
    def stats(self) -> OutboxStats: ...
    def close(self) -> None: ...


def check_put(outbox: Outbox, topic: str, payload: bytes, qos: int) -> None:
    if not topic or "+" in topic or "#" in topic:
        raise OutboxError(f"invalid topic {topic!r}")
    if qos not in (0, 1, 2):
        raise OutboxError(f"invalid qos {qos}")
    if len(payload) > outbox.max_payload_bytes:
        raise OutboxError(
            f"message of {len(payload)} bytes exceeds the payload limit of {outbox.max_payload_bytes} bytes"
        )
