"""When to send an outbox row again: after the broker's PUBACK a row waits for the collector's receipt,
and after "no matching subscribers" for somebody to receive it. Each wait doubles, up to a maximum.

In memory only: after a restart every outbox row is sent once more anyway. Thread-safe (paho's network
thread schedules, the outbox pump asks what is due).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Container, Iterable

__all__ = ["ResendSchedule"]


class ResendSchedule:
    def __init__(self, first_s: float, max_s: float, clock: Callable[[], float]):
        self.first_s, self.max_s = first_s, max(first_s, max_s)
        self._clock = clock
        self._rows: dict[int, tuple[float, int]] = {}  # row id -> (send again at, sends so far)
        self._lock = threading.Lock()

    def sent(self, row_id: int) -> float:
        """The row was sent (once more): returns the wait before it is due again."""
        with self._lock:
            _at, sends = self._rows.get(row_id, (0.0, 0))
            wait = min(self.first_s * 2**sends, self.max_s)
            self._rows[row_id] = (self._clock() + wait, sends + 1)
            return wait

    def due(self, limit: int, flying: Container[int] = ()) -> list[int]:
        """Row ids whose wait is over (oldest id first), skipping those in flight."""
        now = self._clock()
        with self._lock:
            ready = [rid for rid, (at, _n) in self._rows.items() if at <= now and rid not in flying]
        return sorted(ready)[:limit]

    def discard(self, row_ids: Iterable[int]) -> None:
        """Confirmed, set aside or gone: no more sends."""
        with self._lock:
            for row_id in row_ids:
                self._rows.pop(row_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)
