"""The WAL checkpointer: copies the WAL into the database file, off the writer thread.

No automatic checkpoint inside the writer's commits (every ~1000 pages, ~1/3 of the insert time, and
the fsync can stall behind other disk writes): this thread, with its own connection from the
database watch, runs ``PRAGMA wal_checkpoint(PASSIVE)`` (never waits for readers or writers) when
asked: when the writer is idle, and under load every ``every_rows`` committed rows, so the WAL stays
bounded. With ``synchronous=NORMAL`` the fsync happens here. The writer never waits for it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

from collector.store.watch import DbWatch

log = logging.getLogger("edgebench.collector")

__all__ = ["Checkpointer"]


class Checkpointer:
    def __init__(self, watch: DbWatch, stop: threading.Event, *, every_rows: int) -> None:
        self.watch = watch
        self.every_rows = every_rows
        self._stop = stop
        self._since = 0  # rows committed since the last request
        self._due = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> bool:
        """Rows were committed since the last checkpoint request."""
        return self._since > 0

    def committed(self, rows: int) -> None:
        """The writer committed ``rows``: request a checkpoint every ``every_rows``."""
        self._since += rows
        if self._since >= self.every_rows:
            self.request()

    def request(self) -> None:
        self._since = 0
        self._due.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="collector-checkpoint", daemon=True)
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _loop(self) -> None:
        # The connection comes from the watch, which closes and reopens it when the file changes.
        try:
            while not self._stop.is_set():
                if not self._due.wait(0.5):
                    continue
                self._due.clear()
                with self.watch.aux() as conn:
                    if conn is None:  # not writing: the writer reports why
                        continue
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    except sqlite3.Error as exc:
                        log.warning("WAL checkpoint failed: %s", exc)
        except Exception as exc:  # the writer's connection reports the real problem
            log.warning("WAL checkpointer stopped: %s", exc)
