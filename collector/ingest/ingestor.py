"""MQTT ingest: every device's results, status and job events into the store, once each.

:class:`Ingestor` composes the pieces, each of one concern:

- :class:`~collector.ingest.input.MqttInput`: the paho client; its network thread only appends
  ``(topic, payload, mid, qos)`` (raw bytes, straight from the packet) to
- :class:`~collector.ingest.buffer.Inbox`, the bounded queue (back-pressure when full);
- :class:`~collector.ingest.writer.BatchWriter`: the writer thread takes everything queued (up to
  ``batch_max``), parses and validates it, writes it in ONE transaction and commits (through the
  store's :class:`~collector.store.api.BatchTarget`), and only then are the messages acknowledged
  (``manual_ack=True``; one write of all the PUBACKs) and the receipts sent;
- when the stream is idle: :class:`~collector.ingest.health_writer.HealthWriter` (the health row and
  the state file), :class:`~collector.ingest.checkpoint.Checkpointer` (the WAL, on its own thread),
  :class:`~collector.ingest.idle_index.IdleIndexer` (the report index, in steps that give way to the
  next message).

The store is the one ``config.db`` names (:mod:`collector.store.open`): an SQLite file (the default),
behind its database-file watch (:mod:`collector.store.watch`: deleted, replaced, read-only, full), or a
``postgresql://`` URL (:class:`~collector.store.postgres.PostgresStore`, reconnecting by itself; several
collectors may share one database). The WAL checkpointer, the report index and the state files are
SQLite's only (the PostgreSQL report index is still to come).

A collector killed at any point therefore loses nothing: the broker redelivers the unacknowledged
messages to the persistent session (MQTT v5 Session Expiry Interval, or ``clean_session=False`` in
3.1.1 mode) and the primary keys absorb the ones that were already committed. Bad input never stops
the service: it becomes a dead letter (acknowledged, counted, kept with a bounded excerpt).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt

from collector.config import CollectorConfig
from collector.ingest.buffer import Inbox, Incoming
from collector.ingest.checkpoint import Checkpointer
from collector.ingest.errors import IngestError
from collector.ingest.health_writer import HealthWriter
from collector.ingest.idle_index import IdleIndexer
from collector.ingest.input import MqttInput
from collector.ingest.stats import IngestStats
from collector.ingest.writer import BatchWriter, Committed
from collector.mqtt.client import make_ingest_client
from collector.store.api import INTERNAL, BatchTarget, StoreTransaction
from collector.store.open import SqliteBatchTarget, check_store, is_postgres_url, open_postgres
from collector.store.watch import DbWatch
from wire import topics
from wire.errors import EdgebenchError
from wire.schema import ChunkRequest, utc_now

if TYPE_CHECKING:
    from collector.store.postgres import PostgresStore

log = logging.getLogger("edgebench.collector")

SUBSCRIPTIONS = (topics.ALL_RESULTS, topics.ALL_STATUS, topics.ALL_EVENTS)


__all__ = ["IngestError", "IngestStats", "Ingestor"]


class Ingestor:
    """Subscribe, write, acknowledge. ``start()`` returns at once; ``stop()`` drains and disconnects."""

    def __init__(
        self,
        config: CollectorConfig,
        *,
        on_chunk_request: Callable[[ChunkRequest], None] | None = None,
        client_factory: Callable[..., mqtt.Client] = make_ingest_client,
        queue_max: int = 50000,
        shared_group: str | None = None,
        control: bool = True,
        health_every_s: float = 1.0,
        index_idle_s: float | None = 1.0,
        index_batch: int = 1000,
        checkpoint_rows: int = 20000,
        clock: Callable[[], float] = time.monotonic,
        create_db: bool = False,
    ):
        """``create_db``: start an empty database even where a collector has used one before (its
        ``<db>.collector/`` directory exists); without it that is an IngestError. A first run creates it."""
        self.config = config
        self.on_chunk_request = on_chunk_request
        self.shared_group = shared_group  # results arrive on $share/<group>/... (several workers)
        self.control = control  # status, events and chunk requests (one worker only)
        self.stats = IngestStats()
        self.chunk_counter: object | None = None  # the chunk server (chunks_served), set by workers.py
        self._clock = clock
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._writer_error: BaseException | None = None
        self.inbox = Inbox(queue_max, self.stats, self._stop, clock)
        self.input = MqttInput(
            config,
            self.inbox,
            self.stats,
            self._stop,
            on_broker_state=self._broker_state,
            client_factory=client_factory,
            shared_group=shared_group,
            control=control,
            chunk_requests=on_chunk_request is not None,
        )
        self.client = self.input.client
        self.watch: DbWatch | None = None  # SQLite only
        self.postgres: PostgresStore | None = None
        self.target: BatchTarget = self._open_store(config, create_db)
        self.health = HealthWriter(
            config.client_id,
            self.stats,
            self.inbox,
            every_s=health_every_s,
            clock=clock,
            chunks_served=lambda: getattr(self.chunk_counter, "chunks_served", 0),
        )
        self.writer = BatchWriter(
            self.target,
            self.stats,
            self._stop,
            max_payload_bytes=config.max_payload_bytes,
            in_transaction=self.health.write_if_due,
        )
        self.checkpointer: Checkpointer | None = None
        self.indexer: IdleIndexer | None = None
        if self.watch is not None:
            self.checkpointer = Checkpointer(self.watch, self._stop, every_rows=checkpoint_rows)
            self.indexer = IdleIndexer(
                self.watch,
                self.inbox,
                self._stop,
                idle_s=index_idle_s if control else None,
                batch=index_batch,
                clock=clock,
            )

    def _open_store(self, config: CollectorConfig, create_db: bool) -> BatchTarget:
        """PostgreSQL for a URL (connected and migrated now: IngestError if it cannot be); else the SQLite
        file, watched (collector/store/watch.py): deleted, replaced, read-only, full, I/O errors stop the
        acks and recover by themselves; a read-only or failing file at start is no error (the writer
        waits)."""
        try:
            if is_postgres_url(config.db):
                self.postgres = open_postgres(config.db)
                return self.postgres
            self.watch = DbWatch(config.db, config.client_id, create=create_db)
            self.watch.open()
        except (EdgebenchError, OSError) as exc:
            raise IngestError(str(exc)) from None
        return SqliteBatchTarget(self.watch)

    def _broker_state(self, state: str) -> None:
        if self.watch is not None:  # SQLite's state file, which speaks while the database cannot
            self.watch.set_broker(state)

    @property
    def db(self):  # sqlite_utils.Database | None: None while the database cannot be written, or PostgreSQL
        return self.watch.db if self.watch is not None else None

    @property
    def conn(self) -> sqlite3.Connection | None:
        return self.watch.conn if self.watch is not None else None

    @property
    def index_caught_up(self) -> bool:
        """The report index has every committed result (until the next commit); SQLite only."""
        return self.indexer is not None and self.indexer.caught_up

    # -- writer thread
    def _writer_loop(self) -> None:
        try:
            while not (self._stop.is_set() and not self.inbox):
                incoming = self.inbox.take(self.config.batch_max)
                if incoming:
                    self._process(incoming)
                    if self.indexer is not None:
                        self.indexer.caught_up = False
                    continue
                if self.health.due:
                    self._health_tick()
                if self.checkpointer is not None and self.checkpointer.pending:
                    self.checkpointer.request()
                if self.indexer is not None and self.indexer.due:
                    self.indexer.refresh()
        except BaseException as exc:  # pragma: no cover - logged, surfaced by wait()
            self._writer_error = exc
            log.exception("writer stopped")
            self._stop.set()

    def _process(self, incoming: list[Incoming]) -> None:
        committed = self.writer.commit(self.writer.parse(incoming, utc_now()))
        # Committed: now, and only now, acknowledge (QoS 1: one write of all the PUBACKs).
        self.input.acknowledge(incoming)
        batch = committed.batch
        if self.config.receipts:  # end to end: the devices may now delete these from their outboxes
            self.input.send_receipts(batch.parsed, batch.topics, batch.payloads)
        self.stats.count_committed(batch.parsed, committed.inserted, committed.duplicate)
        if self.checkpointer is not None:
            self.checkpointer.committed(len(incoming))
        self._after_commit(committed)
        now = self._clock()
        self.stats.lag_s = now - min(b[4] for b in incoming)
        self.health.note_committed(now)

    def _health_tick(self) -> None:
        """The idle tick's health row: SQLite through its watch (HealthWriter.tick); PostgreSQL in a
        transaction of its own, best effort (the next batch retries the connection properly)."""
        if self.watch is not None:
            self.health.tick(self.watch)
            return
        if self._clock() < self._health_retry_at:
            return
        self.health.note_committed(self._clock())
        self.stats.lag_s = 0.0
        if not self._write_health(lambda tx: self.health.write_if_due(tx, utc_now())):
            self._health_retry_at = self._clock() + self.health.every_s

    _health_retry_at = 0.0  # PostgreSQL: after a failed tick, the next one no sooner than this

    def _write_health(self, write: Callable[[StoreTransaction], None]) -> bool:
        assert self.postgres is not None
        try:
            with self.postgres.transaction() as tx:
                write(tx)
        except Exception as exc:
            if self.target.classify(exc) == INTERNAL:
                raise
            log.warning("health snapshot not written: %s", exc)
            return False
        return True

    def _after_commit(self, committed: Committed) -> None:
        """Dead letters logged (a retained dead status cleared); chunk requests to the chunk server."""
        batch = committed.batch
        for p, topic, payload in zip(batch.parsed, batch.topics, batch.payloads, strict=True):
            if p.kind == "dead":
                log.warning("dead letter on %s: %s", topic, p.reason)
                if self.control and topic.endswith("/status") and payload:
                    self.input.clear_retained(topic)
        if self.on_chunk_request is not None:
            for p in batch.parsed:
                if p.kind == "chunk_request":
                    try:
                        self.on_chunk_request(p.message)
                    except Exception:  # the chunk server must never stop ingest
                        log.exception("chunk request from %s failed", p.message.device_id)

    # -- lifecycle
    @staticmethod
    def check_db(path: str, *, create: bool = False) -> None:
        """Open (create, migrate) the database once; IngestError if it cannot be used and waiting would
        not help (missing where a collector used one and ``create`` unset, not a database)."""
        try:
            check_store(path, create=create)
        except (EdgebenchError, OSError) as exc:
            raise IngestError(str(exc)) from None

    def start(self) -> Ingestor:
        self._writer = threading.Thread(target=self._writer_loop, name="collector-writer", daemon=True)
        self._writer.start()
        if self.checkpointer is not None:
            self.checkpointer.start()
        self.input.start()
        return self

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        """Wait until connected and every subscription acknowledged (SUBACK): ready to receive."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.stats.subscribed:
            time.sleep(0.02)
        return self.stats.subscribed

    def run(self, stop: threading.Event) -> None:
        """Block until ``stop`` is set (or the writer fails), then stop cleanly."""
        while not stop.wait(0.5):
            if self._writer_error is not None:
                break
        self.stop()
        if self._writer_error is not None:
            raise IngestError(f"writer failed: {self._writer_error}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop receiving, commit and acknowledge what is queued, then disconnect."""
        s = self.stats
        log.info(
            "stopping: %d committed in %d batches; %.2f s writing, %.2f s waiting for the write lock",
            s.committed, s.batches, s.write_s, s.lock_wait_s,
        )  # fmt: skip
        self.input.mute()  # anything arriving now is redelivered later
        self._stop.set()
        if self._writer is not None:
            self._writer.join(timeout=timeout_s)
        if self.checkpointer is not None:
            self.checkpointer.join(timeout_s)
        if self.watch is not None:
            self.health.write_final(self.watch)
        else:
            self._write_health(lambda tx: tx.write_health(self.health.row(utc_now(), connected=False)))
        # Let the network thread flush the PUBACKs before disconnecting.
        time.sleep(0.2)
        self.input.close()
        if self.watch is not None:
            self.watch.close()
        if self.postgres is not None:
            self.postgres.close()
