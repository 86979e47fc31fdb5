"""An outbox that makes room before it refuses: a full disk first costs cached models, never results.

:class:`RoomMakingOutbox` wraps the device's :class:`agent.delivery.outbox.SqliteOutbox`. When a
write fails for lack of space (:class:`agent.delivery.outbox.OutboxFull`), it asks
``make_room(need_bytes, what)`` (the artifact cache's :meth:`agent.jobs.cache.ArtifactCache.free_for`: least
recently used models, never the running job's) and tries again; only when nothing more can be freed does the
error reach the caller (:class:`agent.delivery.keeper.MessageKeeper` then holds the message, as before).

Removals too (a DELETE needs WAL pages as well): a PUBACKed row whose removal could not be written
used to stay "pending" until the next restart, after the pump had moved past it: the phantom pending
row of a full disk. Here such an ack (or a collector's confirmation) is remembered and written again
with every later outbox call until it lands; an acked row is neither counted pending nor sent again
meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from agent.delivery.outbox import Outbox, OutboxFull, OutboxRow, OutboxStats

log = logging.getLogger("edgebench.agent.outbox")

__all__ = ["RoomMakingOutbox"]

ACK_ROOM = 64 * 1024  # what an ack (DELETE + counter UPDATE) may need in the WAL


class RoomMakingOutbox:
    """Same interface as the wrapped outbox (unknown attributes pass through)."""

    def __init__(self, inner: Outbox, make_room: Callable[[int, str], int], *, max_rounds: int = 8):
        self.inner = inner
        self.make_room = make_room  # (need_bytes, what) -> bytes freed (0: nothing left to free)
        self.max_rounds = max_rounds
        self.deferred_acks: dict[int, None] = {}  # row ids PUBACKed but not yet removed (ordered)
        self.deferred_confirms: dict[str, None] = {}  # keys the collector committed, not yet removed
        self.rooms_made = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def max_rows(self) -> int:
        return self.inner.max_rows

    @property
    def max_payload_bytes(self) -> int:
        return self.inner.max_payload_bytes

    def _with_room(self, need_bytes: int, what: str, call: Callable[[], Any]) -> Any:
        for _ in range(self.max_rounds):
            try:
                return call()
            except OutboxFull:
                if self.make_room(need_bytes, what) <= 0:
                    raise
                self.rooms_made += 1
        return call()

    def put(self, topic: str, payload: bytes, *args: Any, **kwargs: Any) -> int:
        self._retry_deferred()
        row_id = self._with_room(
            2 * len(payload) + ACK_ROOM, "the outbox", lambda: self.inner.put(topic, payload, *args, **kwargs)
        )
        self._retry_deferred()
        return row_id

    def ack(self, row_id: int) -> bool:
        try:
            done = self._with_room(ACK_ROOM, "the outbox", lambda: self.inner.ack(row_id))
        except OutboxFull:
            with self._lock:
                self.deferred_acks[row_id] = None
            log.warning("outbox row %d delivered; its removal waits for disk room", row_id)
            return True  # written by a later call; meanwhile neither pending nor sent again
        self._retry_deferred()
        return done

    def confirm(self, keys: list[str]) -> list[int]:
        """The collector committed these: remove them (room made first); a removal the disk cannot
        take now is retried with every later outbox call."""
        try:
            removed = self._with_room(ACK_ROOM, "the outbox", lambda: self.inner.confirm(keys))
        except OutboxFull:
            with self._lock:
                self.deferred_confirms.update(dict.fromkeys(keys))
            log.warning("%d confirmed outbox row(s): their removal waits for disk room", len(keys))
            return []
        self._retry_deferred()
        return removed

    def mark_sent(self, row_id: int) -> bool:
        return self._with_room(ACK_ROOM, "the outbox", lambda: self.inner.mark_sent(row_id))

    def reject(self, row_id: int, reason: str) -> bool:
        return self._with_room(ACK_ROOM, "the outbox", lambda: self.inner.reject(row_id, reason))

    def reject_keys(self, rejections: list[tuple[str, str]]) -> list[int]:
        return self._with_room(ACK_ROOM, "the outbox", lambda: self.inner.reject_keys(rejections))

    def pending(self, after_id: int = 0, limit: int = 1000) -> list[OutboxRow]:
        self._retry_deferred()
        rows = self.inner.pending(after_id, limit)
        with self._lock:
            deferred = set(self.deferred_acks)
        return [r for r in rows if r.id not in deferred]

    def stats(self) -> OutboxStats:
        self._retry_deferred()
        stats = self.inner.stats()
        with self._lock:
            waiting = len(self.deferred_acks)
        if not waiting:
            return stats
        # delivered rows whose removal is not yet written are not pending any more
        return replace(stats, pending=max(0, stats.pending - waiting), acked=stats.acked + waiting)

    def _retry_deferred(self) -> None:
        """Write the removals the disk refused before (cheap when there are none)."""
        with self._lock:
            acks, keys = list(self.deferred_acks), list(self.deferred_confirms)
        if not acks and not keys:
            return
        try:
            for row_id in acks:
                self.inner.ack(row_id)
                with self._lock:
                    self.deferred_acks.pop(row_id, None)
            if keys:
                self.inner.confirm(keys)
                with self._lock:
                    for key in keys:
                        self.deferred_confirms.pop(key, None)
        except OutboxFull:
            self.make_room(ACK_ROOM, "the outbox")  # tried again on the next call

    def close(self) -> None:
        self._retry_deferred()
        self.inner.close()
