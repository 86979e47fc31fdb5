"""The in-memory outbox: the behaviour of :class:`agent.delivery.outbox_sqlite.SqliteOutbox`, not durable
(tests, tools that need no durability)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from agent.delivery.outbox_protocol import OutboxRow, OutboxStats, check_put

__all__ = ["MemoryOutbox"]


class MemoryOutbox:
    """In-memory outbox (not durable), behaviour identical to :class:`SqliteOutbox`."""

    def __init__(self, max_rows: int = 100_000, max_payload_bytes: int = 1024 * 1024):
        self.max_rows, self.max_payload_bytes = max_rows, max_payload_bytes
        self._rows: OrderedDict[int, OutboxRow] = OrderedDict()
        self._sent: set[int] = set()
        self._next = 1
        self._dropped = self._rejected = self._acked = 0
        self._last_reason = ""
        self._lock = threading.Lock()

    def put(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, key: str | None = None
    ) -> int:
        check_put(self, topic, payload, qos)
        with self._lock:
            while len(self._rows) >= self.max_rows:
                old, _row = self._rows.popitem(last=False)
                self._sent.discard(old)
                self._dropped += 1
            row_id, self._next = self._next, self._next + 1
            self._rows[row_id] = OutboxRow(row_id, topic, bytes(payload), qos, retain, key)
            return row_id

    def pending(self, after_id: int = 0, limit: int = 1000) -> list[OutboxRow]:
        with self._lock:
            return [r for r in self._rows.values() if r.id > after_id][:limit]

    def rows(self, row_ids: list[int]) -> list[OutboxRow]:
        with self._lock:
            return [self._rows[i] for i in sorted(row_ids) if i in self._rows]

    def _remove(self, row_id: int) -> OutboxRow | None:
        self._sent.discard(row_id)
        return self._rows.pop(row_id, None)

    def ack(self, row_id: int) -> bool:
        with self._lock:
            if self._remove(row_id) is None:
                return False
            self._acked += 1
            return True

    def mark_sent(self, row_id: int) -> bool:
        with self._lock:
            if row_id not in self._rows:
                return False
            self._sent.add(row_id)
            return True

    def confirm(self, keys: list[str]) -> list[int]:
        wanted = set(keys)
        with self._lock:
            ids = [r.id for r in self._rows.values() if r.key is not None and r.key in wanted]
            for row_id in ids:
                self._remove(row_id)
            self._acked += len(ids)
            return ids

    def reject(self, row_id: int, reason: str) -> bool:
        with self._lock:
            if self._remove(row_id) is None:
                return False
            self._rejected += 1
            self._last_reason = reason
            return True

    def reject_keys(self, rejections: list[tuple[str, str]]) -> list[int]:
        reasons = dict(rejections)
        with self._lock:
            ids = [(r.id, reasons[r.key]) for r in self._rows.values() if r.key in reasons]
            for row_id, reason in ids:
                self._remove(row_id)
                self._rejected += 1
                self._last_reason = reason
            return [i for i, _ in ids]

    def stats(self) -> OutboxStats:
        with self._lock:
            return OutboxStats(
                len(self._rows),
                self._dropped,
                self._rejected,
                self._acked,
                self._last_reason,
                len(self._sent),
            )

    def close(self) -> None:
        pass
