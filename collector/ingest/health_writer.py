"""The ingest writer's health row (``collector_health``): what `collector status` shows as rate, lag, queue.

Written inside a batch transaction at most every ``every_s`` (:meth:`HealthWriter.write_if_due`), on
the writer's idle tick in a transaction of its own (:meth:`HealthWriter.tick`, which also refreshes
the sidecar state file and lets the database watch notice a deleted, replaced or read-only file),
and once more at stop with ``connected`` 0 (:meth:`HealthWriter.write_final`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections import deque
from collections.abc import Callable

from collector.ingest.buffer import Inbox
from collector.ingest.stats import IngestStats
from collector.store.api import HealthRow, StoreTransaction
from collector.store.sqlite import transaction
from collector.store.watch import DbWatch
from wire.schema import utc_now

log = logging.getLogger("edgebench.collector")

__all__ = ["HealthWriter"]

RATE_WINDOW_S = 10.0  # the rate is over the last ~10 s of commits


class HealthWriter:
    """Keeps the rate window and writes the row; ``chunks_served()`` asks the chunk server, if any."""

    def __init__(
        self,
        client_id: str,
        stats: IngestStats,
        inbox: Inbox,
        *,
        every_s: float,
        clock: Callable[[], float],
        chunks_served: Callable[[], int],
    ) -> None:
        self.client_id = client_id
        self.every_s = every_s
        self.started_at = utc_now()
        self._stats = stats
        self._inbox = inbox
        self._clock = clock
        self._chunks_served = chunks_served
        self._window: deque[tuple[float, int]] = deque()  # (clock, committed so far)
        self._last = 0.0

    def note_committed(self, now: float) -> None:
        self._window.append((now, self._stats.committed))

    @property
    def due(self) -> bool:
        return self._clock() - self._last >= self.every_s

    def row(self, at: str, *, connected: bool | None = None) -> HealthRow:
        """The snapshot now (``connected``: the input's state unless given); updates ``rate_per_s``."""
        s, now, window = self._stats, self._clock(), self._window
        while len(window) > 2 and window[1][0] < now - RATE_WINDOW_S:
            window.popleft()
        if len(window) >= 2:
            (t0, c0), (t1, c1) = window[0], window[-1]
            s.rate_per_s = (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0
        return HealthRow(
            client_id=self.client_id,
            pid=os.getpid(),
            started_at=self.started_at,
            updated_at=at,
            connected=s.connected if connected is None else connected,
            received=s.received,
            committed=s.committed,
            results_inserted=s.results_inserted,
            results_duplicate=s.results_duplicate,
            dead_letters=s.dead_letters,
            queue_depth=len(self._inbox),
            rate_per_s=s.rate_per_s,
            lag_s=s.lag_s,
            chunks_served=self._chunks_served(),
        )

    def write_if_due(self, tx: StoreTransaction, at: str) -> None:
        """Inside a batch transaction: the row, at most every ``every_s``."""
        if self.due:
            self._last = self._clock()
            tx.write_health(self.row(at))

    def tick(self, watch: DbWatch) -> None:
        """The idle tick: check the database (recovering it when it was deleted or replaced, reopening
        it once writable again), refresh the state file, write the row."""
        self.note_committed(self._clock())
        self._stats.lag_s = 0.0
        watch.heartbeat(self.every_s, self._clock())
        conn = watch.ensure()
        self._last = self._clock()
        if conn is None:  # the state file says why; try again next tick
            return
        try:
            with transaction(conn) as tx:
                tx.write_health(self.row(utc_now()))
            watch.committed()
        except sqlite3.Error as exc:
            log.warning("health snapshot not written: %s", exc)
            if isinstance(exc, sqlite3.OperationalError):
                watch.failed(exc)

    def write_final(self, watch: DbWatch) -> None:
        """At stop: the last row, ``connected`` 0 (best effort: the database may be unwritable)."""
        conn = watch.ensure()
        if conn is None:
            return
        try:
            with transaction(conn) as tx:
                tx.write_health(self.row(utc_now(), connected=False))
        except sqlite3.Error:
            pass
