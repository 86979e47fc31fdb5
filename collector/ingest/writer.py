"""The ingest writer: one batch from the inbox, parsed, written in ONE transaction, committed.

``INSERT ... ON CONFLICT DO NOTHING`` for results, upserts for devices, ``OR IGNORE`` for events, rows
for dead letters (through :class:`collector.store.api.StoreTransaction`). :meth:`BatchWriter.commit`
returns only once the batch is committed (the store's :class:`~collector.store.api.BatchTarget` retries
while the database cannot be written: SQLite's file watch, PostgreSQL's reconnect), and hands back the
:class:`Committed` batch: what the caller may now acknowledge and send receipts for. The backend says
what an error means (``classify``): a TRANSIENT one (locked, read-only, full, I/O, connection lost) is
retried with nothing acknowledged; any other writes the messages one by one, and the culprit becomes a
dead letter (``store-error`` when the store REFUSED it, ``internal-error`` for an exception nobody
foresaw). This module knows no database engine.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from collector.ingest.buffer import Incoming
from collector.ingest.stats import IngestStats
from collector.messages.parse import Parsed, parse
from collector.store.api import REFUSED, TRANSIENT, BatchTarget, Begin, DeadLetter, StoreTransaction

log = logging.getLogger("edgebench.collector")

__all__ = ["Batch", "BatchWriter", "Committed"]


@dataclass(frozen=True)
class Batch:
    """Messages parsed for one transaction, received at ``at``: parallel tuples."""

    parsed: tuple[Parsed, ...]
    topics: tuple[str, ...]
    payloads: tuple[bytes, ...]
    at: str

    def one(self, i: int) -> Batch:
        return Batch((self.parsed[i],), (self.topics[i],), (self.payloads[i],), self.at)

    def dead_lettered(self, i: int, reason: str) -> Batch:
        """The same batch with message ``i`` a dead letter."""
        parsed = (*self.parsed[:i], Parsed("dead", reason=reason), *self.parsed[i + 1 :])
        return dataclasses.replace(self, parsed=parsed)

    @property
    def results(self) -> int:
        return sum(1 for p in self.parsed if p.kind == "result")


@dataclass(frozen=True)
class Committed:
    """A batch in the database: ``inserted`` new results, ``duplicate`` copies absorbed."""

    batch: Batch
    inserted: int
    duplicate: int


class BatchWriter:
    """Parse and commit batches (the writer thread). ``in_transaction(tx, at)`` runs inside every
    batch transaction before its commit (the health row)."""

    def __init__(
        self,
        target: BatchTarget,
        stats: IngestStats,
        stop: threading.Event,
        *,
        max_payload_bytes: int,
        in_transaction: Callable[[StoreTransaction, str], None],
    ) -> None:
        self.target = target
        self.max_payload_bytes = max_payload_bytes
        self._stats = stats
        self._stop = stop
        self._in_transaction = in_transaction

    def parse(self, incoming: Sequence[Incoming], at: str) -> Batch:
        topics_ = tuple(b[0] for b in incoming)
        payloads = tuple(b[1] for b in incoming)
        limit = self.max_payload_bytes
        parsed = tuple(parse(t, p, limit) for t, p in zip(topics_, payloads, strict=True))
        return Batch(parsed, topics_, payloads, at)

    def commit(self, batch: Batch) -> Committed:
        """Commit the batch (retrying while the database cannot be written: see BatchTarget.write);
        nothing may be acknowledged before this returns."""

        def write(begin: Begin) -> Committed:
            try:
                return self._write(begin, batch)
            except Exception as exc:
                if self.target.classify(exc) == TRANSIENT:  # the target retries
                    raise
                # a store error, or one message the code did not foresee
                log.error("batch write failed (%r); writing one by one", exc)
                written = self._write_one_by_one(begin, batch)
                return Committed(written, written.results, 0)

        return self.target.write(write, self._stop)

    def _write(self, begin: Begin, batch: Batch) -> Committed:
        parsed, at = batch.parsed, batch.at
        results = [p for p in parsed if p.kind == "result"]
        dead = [
            DeadLetter(t, p.reason, payload)
            for p, t, payload in zip(parsed, batch.topics, batch.payloads, strict=True)
            if p.kind == "dead"
        ]
        t0 = time.perf_counter()
        with begin() as tx:
            t1 = time.perf_counter()
            inserted = tx.insert_results([p.message for p in results], [p.text for p in results], at)
            tx.upsert_statuses(p.message for p in parsed if p.kind == "status")
            tx.insert_job_events([p.message for p in parsed if p.kind == "event"], at)
            tx.insert_dead_letters(dead, at)
            self._in_transaction(tx, at)
        self._stats.lock_wait_s += t1 - t0
        self._stats.write_s += time.perf_counter() - t1
        return Committed(batch, inserted, len(results) - inserted)

    def _write_one_by_one(self, begin: Begin, batch: Batch) -> Batch:
        """After a non-transient store error: isolate the culprit, dead-letter it, keep the rest.
        Returns the batch as written (the culprits dead letters)."""
        for i in range(len(batch.parsed)):
            try:
                self._write(begin, batch.one(i))
                continue
            except Exception as exc:
                kind = self.target.classify(exc)
                if kind == TRANSIENT:
                    raise
                if kind == REFUSED:
                    batch = batch.dead_lettered(i, f"store-error: {exc}")
                else:  # a poison message: quarantined as a dead letter, the rest goes on
                    log.exception("message on %s could not be written; dead-lettered", batch.topics[i])
                    reason = f"internal-error: {type(exc).__name__}: {str(exc)[:200]}"
                    batch = batch.dead_lettered(i, reason)
            self._write(begin, batch.one(i))
        return batch
