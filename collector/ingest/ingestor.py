"""MQTT ingest: every device's results, status and job events into SQLite, once each.

paho's network thread only appends ``(topic, payload, mid, qos)`` to a bounded inbox (raw bytes,
straight from the packet: see :mod:`collector.ingest.mqttfast`). One writer thread takes everything
queued (up to ``batch_max``), parses and validates it, writes it in ONE transaction
(``INSERT ... ON CONFLICT DO NOTHING`` for results, upserts for devices, ``OR IGNORE`` for events,
rows for dead letters), commits, and only then acknowledges the batch (``manual_ack=True``; one
write of all the PUBACKs). When the stream is idle the writer checkpoints the WAL and brings the
report index up to date, in steps that give way to the next message. A collector killed at any
point therefore loses nothing: the broker redelivers the unacknowledged messages to the
persistent session (MQTT v5 Session Expiry Interval, or ``clean_session=False`` in 3.1.1 mode) and
the primary keys absorb the ones that were already committed. Bad input never stops the service:
it becomes a dead letter (acknowledged, counted, kept with a bounded excerpt).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from collector.config import CollectorConfig, ConfigError
from collector.ingest.mqttfast import FastClient, ack_batch
from collector.ingest.parse import CHUNK_SHARE, Parsed, parse
from collector.ingest.receipts import build_receipts
from collector.mqtt_client import connect_kwargs, make_ingest_client
from collector.store.sqlite import (
    DEAD_LETTER_SQL,
    DEVICE_UPSERT_SQL,
    JOB_EVENT_SQL,
    dead_letter_row,
    device_params,
    insert_result_rows,
    job_event_row,
    result_row,
)
from collector.store.watch import SUBSCRIBED, DbWatch, DbWatchError, check_database
from wire import topics
from wire.errors import EdgebenchError
from wire.schema import ChunkRequest, utc_now

log = logging.getLogger("edgebench.collector")

SUBSCRIPTIONS = (topics.ALL_RESULTS, topics.ALL_STATUS, topics.ALL_EVENTS)


__all__ = ["IngestError", "IngestStats", "Ingestor"]


class IngestError(EdgebenchError, RuntimeError):
    """The collector cannot start (database, broker settings)."""


# ---------------------------------------------------------------- the service


class _GiveWay(Exception):
    """Messages are waiting: stop indexing (after a committed step)."""


@dataclass
class IngestStats:
    received: int = 0
    committed: int = 0
    results_inserted: int = 0
    results_duplicate: int = 0
    statuses: int = 0
    events: int = 0
    chunk_requests: int = 0
    dropped: int = 0  # counted, not stored: empty status payloads (a retained status being cleared)
    retained_cleared: int = 0  # retained garbage on a status topic removed from the broker
    batches: int = 0
    connected: bool = False
    subscribed: bool = False  # every subscription acknowledged (SUBACK) on the current connection
    receipts_sent: int = 0
    lag_s: float = 0.0
    rate_per_s: float = 0.0
    lock_wait_s: float = 0.0  # time spent waiting for the database write lock (other workers, readers)
    write_s: float = 0.0  # time from BEGIN to COMMIT done

    def __post_init__(self) -> None:
        self.dead = Counter()

    @property
    def dead_letters(self) -> int:
        return sum(self.dead.values())


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
        # paho's thread appends, the writer pops (deque appends/pops are atomic); the writer sleeps on
        # _wake only when the inbox is empty, so a busy stream costs no lock or notify per message.
        self._inbox: deque[tuple[str, bytes, int, int, float, int]] = deque()
        self._inbox_max = queue_max
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._clock = clock
        self._health_every_s = health_every_s
        # Report index (collector/store/report_index.py) kept current while the stream is idle; only the
        # control worker does it, so several workers never race for it.
        self._index_idle_s = index_idle_s if control else None
        self._index_batch = index_batch
        self._checkpoint_rows = checkpoint_rows
        self._since_checkpoint = 0
        self._checkpoint_due = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self._last_index = clock()
        self.index_caught_up = False
        self._rate_window: deque[tuple[float, int]] = deque()
        self._started_at = utc_now()
        self._writer_error: BaseException | None = None
        self._generation = 0
        try:
            self.client = client_factory(config.broker, config.client_id, persistent=True, manual_ack=True)
        except (ConfigError, OSError, ValueError) as exc:  # password file, TLS files
            raise IngestError(f"broker settings: {exc}") from None
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        if isinstance(self.client, FastClient):
            self.client.on_raw_message = self._enqueue  # QoS 1 without properties: no MQTTMessage
        # The database, watched (collector/store/watch.py): deleted, replaced, read-only, full, I/O errors
        # stop the acks and recover by themselves. No automatic checkpoint inside our commits (every
        # ~1000 pages, ~1/3 of the insert time, and the fsync can stall behind other disk writes): a
        # checkpointer thread with its own connection runs one when the writer is idle, and under
        # load every `checkpoint_rows` rows, so the WAL stays bounded. With synchronous=NORMAL the
        # fsync happens there. A read-only or failing file at start is no error: the writer waits.
        self.watch = DbWatch(config.db, config.client_id, create=create_db)
        try:
            self.watch.open()
        except (DbWatchError, OSError) as exc:
            raise IngestError(str(exc)) from None

    @property
    def db(self):  # sqlite_utils.Database | None: None while the database cannot be written
        return self.watch.db

    @property
    def conn(self) -> sqlite3.Connection | None:
        return self.watch.conn

    # -- network thread
    def _subscriptions(self) -> list[tuple[str, int]]:
        share = f"$share/{self.shared_group}/" if self.shared_group else ""
        subs = [(share + topics.ALL_RESULTS, 1)]
        if self.control:
            subs += [(topics.ALL_STATUS, 1), (topics.ALL_EVENTS, 1)]
        if self.control and self.on_chunk_request is not None:
            shared = self.config.broker.mqtt_version == 5
            subs.append(((CHUNK_SHARE if shared else "") + topics.ALL_CHUNK_REQUESTS, 1))
        return subs

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        self._generation += 1  # acks of messages from an earlier connection are never sent
        self.stats.connected = True
        self.stats.subscribed = False
        self.watch.set_broker("connected, not subscribed yet")
        log.info("connected (session present: %s)", getattr(flags, "session_present", None))
        subs = self._subscriptions()
        _rc, self._sub_mid = client.subscribe(subs)
        self._sub_topics = [t for t, _q in subs]

    _sub_mid: int | None = None
    _sub_topics: list[str] = []

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, props: Any
    ) -> None:
        if mid != self._sub_mid:
            return
        refused = [f"{t} ({c})" for t, c in zip(self._sub_topics, reason_codes, strict=False) if c.is_failure]
        if refused:
            log.error("NOT SUBSCRIBED: the broker refused %s; nothing arrives there", ", ".join(refused))
            self.watch.set_broker("connected, not subscribed: the broker refused " + ", ".join(refused))
            return
        self.stats.subscribed = True
        self.watch.set_broker(SUBSCRIBED)
        log.info("subscribed to %d topics", len(self._sub_topics))

    def _on_connect_fail(self, client: mqtt.Client, _u: Any) -> None:
        b = self.config.broker
        log.warning("cannot reach the broker at %s:%s; retrying", b.host, b.port)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        self.stats.connected = False
        self.stats.subscribed = False
        if not self._stop.is_set():
            self.watch.set_broker(f"disconnected ({reason_code}); reconnecting")
            log.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._enqueue(msg.topic, msg.payload, msg.mid, msg.qos)

    def _enqueue(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        self.stats.received += 1
        inbox = self._inbox
        inbox.append((topic, payload, mid, qos, self._clock(), self._generation))
        if not self._wake.is_set():
            self._wake.set()
        if len(inbox) >= self._inbox_max:  # back-pressure: stop reading until the writer catches up
            while len(inbox) >= self._inbox_max and not self._stop.is_set():
                time.sleep(0.002)

    # -- writer thread
    def _take_batch(self, timeout_s: float = 0.1) -> list[tuple[str, bytes, int, int, float, int]]:
        inbox = self._inbox
        if not inbox:
            self._wake.clear()
            if not inbox and not self._wake.wait(timeout_s):
                return []
        popleft = inbox.popleft
        n = min(len(inbox), self.config.batch_max)
        return [popleft() for _ in range(n)]

    def _write(
        self,
        conn: sqlite3.Connection,
        parsed: list[Parsed],
        topics_: list[str],
        payloads: list[bytes],
        at: str,
    ) -> tuple[int, int]:
        results = [result_row(p.message, at, p.text) for p in parsed if p.kind == "result"]
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        t1 = time.perf_counter()
        try:
            inserted = insert_result_rows(conn, results)
            for p in parsed:
                if p.kind == "status":
                    conn.execute(DEVICE_UPSERT_SQL, device_params(p.message))
            events = [job_event_row(p.message, at) for p in parsed if p.kind == "event"]
            if events:
                conn.executemany(JOB_EVENT_SQL, events)
            dead = [
                dead_letter_row(t, p.reason, payload, at)
                for p, t, payload in zip(parsed, topics_, payloads, strict=True)
                if p.kind == "dead"
            ]
            if dead:
                conn.executemany(DEAD_LETTER_SQL, dead)
            self._maybe_write_health(conn, at)
            conn.execute("COMMIT")
            self.stats.lock_wait_s += t1 - t0
            self.stats.write_s += time.perf_counter() - t1
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return inserted, len(results) - inserted

    def _write_one_by_one(
        self,
        conn: sqlite3.Connection,
        parsed: list[Parsed],
        topics_: list[str],
        payloads: list[bytes],
        at: str,
    ) -> None:
        """After a non-transient store error: isolate the culprit, dead-letter it, keep the rest."""
        for i, p in enumerate(parsed):
            try:
                self._write(conn, [p], [topics_[i]], [payloads[i]], at)
            except sqlite3.OperationalError:
                raise
            except sqlite3.Error as exc:
                parsed[i] = Parsed("dead", reason=f"store-error: {exc}")
                self._write(conn, [parsed[i]], [topics_[i]], [payloads[i]], at)
            except Exception as exc:  # a poison message: quarantined as a dead letter, the rest goes on
                log.exception("message on %s could not be written; dead-lettered", topics_[i])
                parsed[i] = Parsed("dead", reason=f"internal-error: {type(exc).__name__}: {str(exc)[:200]}")
                self._write(conn, [parsed[i]], [topics_[i]], [payloads[i]], at)

    def _process(self, batch: list[tuple[str, bytes, int, int, float, int]]) -> None:
        topics_ = [b[0] for b in batch]
        payloads = [b[1] for b in batch]
        parsed = [parse(t, p, self.config.max_payload_bytes) for t, p in zip(topics_, payloads, strict=True)]
        at = utc_now()
        inserted, duplicate = self._write_watched(parsed, topics_, payloads, at)
        # Committed: now, and only now, acknowledge (QoS 1: one write of all the PUBACKs).
        generation = self._generation
        # A message from an earlier connection is redelivered on this one (same or new packet id)
        # and its copy is absorbed by the primary key: acking the old mid could hit another message.
        ack_batch(self.client, [(b[2], b[3]) for b in batch if b[3] and b[5] == generation])
        if self.config.receipts:  # end to end: the devices may now delete these from their outboxes
            self._send_receipts(parsed, topics_, payloads)
        s = self.stats
        s.committed += len(batch)
        self._since_checkpoint += len(batch)
        if self._since_checkpoint >= self._checkpoint_rows:
            self._checkpoint()
        s.batches += 1
        s.results_inserted += inserted
        s.results_duplicate += duplicate
        for i, p in enumerate(parsed):
            if p.kind == "status":
                s.statuses += 1
            elif p.kind == "event":
                s.events += 1
            elif p.kind == "chunk_request":
                s.chunk_requests += 1
            elif p.kind == "drop":
                s.dropped += 1
            elif p.kind == "dead":
                s.dead[p.reason.partition(":")[0]] += 1
                log.warning("dead letter on %s: %s", topics_[i], p.reason)
                if self.control and topics_[i].endswith("/status") and payloads[i]:
                    self._clear_retained(topics_[i])
        now = self._clock()
        s.lag_s = now - min(b[4] for b in batch)
        self._rate_window.append((now, s.committed))
        if self.on_chunk_request is not None:
            for p in parsed:
                if p.kind == "chunk_request":
                    try:
                        self.on_chunk_request(p.message)
                    except Exception:  # the chunk server must never stop ingest
                        log.exception("chunk request from %s failed", p.message.device_id)

    def _clear_retained(self, topic: str) -> None:
        """A status that is a dead letter may be retained: clear it, or every reconnect brings it back
        (the device's next heartbeat publishes its real status again). The empty message this sends
        comes back to us as a counted drop, not a dead letter."""
        info = self.client.publish(topic, b"", qos=1, retain=True)
        if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self.stats.retained_cleared += 1
            log.warning("cleared the retained message on %s (a dead letter)", topic)

    def _send_receipts(self, parsed: list[Parsed], topics_: list[str], payloads: list[bytes]) -> None:
        for topic, payload in build_receipts(parsed, topics_, payloads):
            info = self.client.publish(topic, payload, qos=1)
            if info.rc == mqtt.MQTT_ERR_SUCCESS or info.rc == mqtt.MQTT_ERR_NO_CONN:
                self.stats.receipts_sent += 1  # NO_CONN: paho sends it after the reconnect
            else:  # the device sends the messages again after its timeout
                log.warning("receipt for %s not sent: %s", topic, mqtt.error_string(info.rc))

    def _write_watched(
        self, parsed: list[Parsed], topics_: list[str], payloads: list[bytes], at: str
    ) -> tuple[int, int]:
        """Commit the batch to the file at the configured path (retrying while the database cannot be
        written: see DbWatch.write); nothing is acknowledged before this returns."""

        def write(conn: sqlite3.Connection) -> tuple[int, int]:
            try:
                return self._write(conn, parsed, topics_, payloads, at)
            except sqlite3.OperationalError:  # locked, read-only, full, I/O: the watch retries
                raise
            except Exception as exc:  # a store error, or one message the code did not foresee
                log.error("batch write failed (%r); writing one by one", exc)
                self._write_one_by_one(conn, parsed, topics_, payloads, at)
                return sum(1 for p in parsed if p.kind == "result"), 0

        return self.watch.write(write, self._stop)

    _last_health = 0.0

    def _maybe_write_health(self, conn: sqlite3.Connection, at: str, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._last_health < self._health_every_s:
            return
        self._last_health = now
        s = self.stats
        window = self._rate_window
        while len(window) > 2 and window[1][0] < now - 10.0:  # the last ~10 s
            window.popleft()
        if len(window) >= 2:
            (t0, c0), (t1, c1) = self._rate_window[0], self._rate_window[-1]
            s.rate_per_s = (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0
        conn.execute(
            "INSERT OR REPLACE INTO collector_health (client_id, pid, started_at, updated_at, connected, "
            "received, committed, results_inserted, results_duplicate, dead_letters, queue_depth, "
            "rate_per_s, lag_s, chunks_served) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self.config.client_id,
                os.getpid(),
                self._started_at,
                at,
                int(s.connected),
                s.received,
                s.committed,
                s.results_inserted,
                s.results_duplicate,
                s.dead_letters,
                len(self._inbox),
                s.rate_per_s,
                s.lag_s,
                getattr(getattr(self, "chunk_counter", None), "chunks_served", 0),
            ),
        )

    def _write_health_now(self) -> None:
        """The idle tick: check the database (recovering it when it was deleted or replaced, reopening
        it once writable again), refresh the state file, write the health row."""
        self.watch.heartbeat(self._health_every_s, self._clock())
        conn = self.watch.ensure()
        if conn is None:
            self._last_health = self._clock()  # the state file says why; try again next tick
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._maybe_write_health(conn, utc_now(), force=True)
            conn.execute("COMMIT")
            self.watch.committed()
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            log.warning("health snapshot not written: %s", exc)
            if isinstance(exc, sqlite3.OperationalError):
                self.watch.failed(exc)

    def _writer_loop(self) -> None:
        try:
            while not (self._stop.is_set() and not self._inbox):
                batch = self._take_batch()
                if batch:
                    self._process(batch)
                    self.index_caught_up = False
                    continue
                if self._clock() - self._last_health >= self._health_every_s:
                    self._rate_window.append((self._clock(), self.stats.committed))
                    self.stats.lag_s = 0.0
                    self._write_health_now()
                if self._since_checkpoint:
                    self._checkpoint()
                if (
                    self._index_idle_s is not None
                    and not self.index_caught_up
                    and self._clock() - self._last_index >= self._index_idle_s
                ):
                    self._index_when_idle()
        except BaseException as exc:  # pragma: no cover - logged, surfaced by wait()
            self._writer_error = exc
            log.exception("writer stopped")
            self._stop.set()

    def _checkpoint(self) -> None:
        """Ask the checkpointer thread for a checkpoint (the writer never waits for it)."""
        self._since_checkpoint = 0
        self._checkpoint_due.set()

    def _checkpointer_loop(self) -> None:
        """Copy the WAL into the database on request (PASSIVE: never waits for readers or writers).

        Its own connection: the writer keeps committing (to the WAL) while pages are copied and synced.
        """
        # The connection comes from the watch, which closes and reopens it when the file changes.
        try:
            while not self._stop.is_set():
                if not self._checkpoint_due.wait(0.5):
                    continue
                self._checkpoint_due.clear()
                with self.watch.aux() as conn:
                    if conn is None:  # not writing: the writer reports why
                        continue
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    except sqlite3.Error as exc:
                        log.warning("WAL checkpoint failed: %s", exc)
        except Exception as exc:  # the writer's connection reports the real problem
            log.warning("WAL checkpointer stopped: %s", exc)

    def _index_when_idle(self) -> None:
        """Bring the report index up to date in steps of ``index_batch`` rows (one transaction each),
        giving way as soon as a message arrives: under load nothing is indexed, so ingest never waits."""
        from collector.store.report_index import ReportError, refresh_index

        def give_way(_added: int) -> None:
            if self._inbox or self._stop.is_set():
                raise _GiveWay

        self._last_index = self._clock()
        conn = self.conn
        if conn is None:
            return
        try:
            refresh_index(conn, batch=self._index_batch, progress=give_way)
            self.index_caught_up = True
        except _GiveWay:
            pass
        except (sqlite3.Error, ReportError) as exc:  # the index is a cache: log and retry later
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            log.warning("report index not refreshed: %s", exc)
        self._last_index = self._clock()

    # -- lifecycle
    @staticmethod
    def check_db(path: str, *, create: bool = False) -> None:
        """Open (create, migrate) the database once; IngestError if it cannot be used and waiting would
        not help (missing where a collector used one and ``create`` unset, not a database)."""
        try:
            check_database(path, create=create)
        except (DbWatchError, OSError) as exc:
            raise IngestError(str(exc)) from None

    def start(self) -> Ingestor:
        self._writer = threading.Thread(target=self._writer_loop, name="collector-writer", daemon=True)
        self._writer.start()
        self._checkpointer = threading.Thread(
            target=self._checkpointer_loop, name="collector-checkpoint", daemon=True
        )
        self._checkpointer.start()
        kwargs = connect_kwargs(
            self.config.broker, persistent=True, session_expiry_s=self.config.session_expiry_s
        )
        self.client.connect_async(**kwargs)
        self.client.loop_start()
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
        self.client.on_message = lambda *a: None  # anything arriving now is redelivered later
        if isinstance(self.client, FastClient):
            self.client.on_raw_message = lambda *a: None
        self._stop.set()
        if self._writer is not None:
            self._writer.join(timeout=timeout_s)
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=timeout_s)
        conn = self.watch.ensure()
        try:
            if conn is not None:
                conn.execute("BEGIN IMMEDIATE")
                self._maybe_write_health(conn, utc_now(), force=True)
                conn.execute(
                    "UPDATE collector_health SET connected = 0 WHERE client_id = ?", (self.config.client_id,)
                )
                conn.execute("COMMIT")
        except sqlite3.Error:
            if conn is not None and conn.in_transaction:
                conn.execute("ROLLBACK")
        # Let the network thread flush the PUBACKs before disconnecting.
        time.sleep(0.2)
        self.client.disconnect()
        self.client.loop_stop()
        self.watch.close()
