"""The report index (collector/store/report_index.py), brought up to date while the stream is idle.

In steps of ``batch`` rows (one transaction each), giving way as soon as a message arrives: under load
nothing is indexed, so ingest never waits for it. Only the control worker does it, so several workers
never race for it. The index is a cache: an error is logged and the refresh retried later.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

from collector.ingest.buffer import Inbox
from collector.store.watch import DbWatch

log = logging.getLogger("edgebench.collector")

__all__ = ["IdleIndexer"]


class _GiveWay(Exception):
    """Messages are waiting: stop indexing (after a committed step)."""


class IdleIndexer:
    """``idle_s`` None: never (another worker does it). ``caught_up`` until the next commit."""

    def __init__(
        self,
        watch: DbWatch,
        inbox: Inbox,
        stop: threading.Event,
        *,
        idle_s: float | None,
        batch: int,
        clock: Callable[[], float],
    ) -> None:
        self.watch = watch
        self.idle_s = idle_s
        self.batch = batch
        self.caught_up = False
        self._inbox = inbox
        self._stop = stop
        self._clock = clock
        self._last = clock()

    @property
    def due(self) -> bool:
        return self.idle_s is not None and not self.caught_up and self._clock() - self._last >= self.idle_s

    def refresh(self) -> None:
        from collector.store.report_index import ReportError, refresh_index

        def give_way(_added: int) -> None:
            if self._inbox or self._stop.is_set():
                raise _GiveWay

        self._last = self._clock()
        conn = self.watch.conn
        if conn is None:
            return
        try:
            refresh_index(conn, batch=self.batch, progress=give_way)
            self.caught_up = True
        except _GiveWay:
            pass
        except (sqlite3.Error, ReportError) as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            log.warning("report index not refreshed: %s", exc)
        self._last = self._clock()
