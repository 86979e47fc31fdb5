"""The collector's PostgreSQL store (psycopg 3): the :class:`collector.store.api.ResultStore` interface
on a server that several collectors, on several hosts, write at once.

The same tables and idempotence as the SQLite store: results by ``result_id`` and job events by their
unique index with ``ON CONFLICT DO NOTHING`` (a redelivery, or the same message through two collectors,
is absorbed), devices and health rows upserted. The rows come from the same pure builders
(:mod:`collector.store.sqlite_rows`); only the statements are this dialect's. Timestamps are ISO text
compared with ``COLLATE "C"`` (byte order, as in SQLite), whatever the database's locale.

Ingest reaches it as a :class:`collector.store.api.BatchTarget`: :meth:`PostgresStore.write` runs a
batch until it commits, reconnecting and retrying (with backoff) while the server cannot be written;
:meth:`PostgresStore.classify` says what an error means (see :func:`classify`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import errors, sql

from collector.store.api import INTERNAL, REFUSED, TRANSIENT, Begin, DeadLetter, ErrorKind, HealthRow
from collector.store.migrations import RESULT_COLUMN_NAMES, MigrationError
from collector.store.postgres_migrations import apply_migrations
from collector.store.sqlite import StoreError
from collector.store.sqlite_rows import (
    HEALTH_COLUMNS,
    artifact_params,
    dead_letter_row,
    device_params,
    health_params,
    job_event_row,
    result_row,
)
from wire.codec import encode
from wire.schema import ArtifactInfo, ArtifactRef, DeviceStatus, Job, JobEvent, ResultRecord, utc_now

log = logging.getLogger("edgebench.collector")
T = TypeVar("T")

__all__ = ["PostgresStore", "PostgresTransaction", "classify"]

_RESULT_COLUMNS = ", ".join(f'"{c}"' for c in RESULT_COLUMN_NAMES)  # quoted: "precision" is a keyword
INSERT_RESULT_SQL = (
    f"INSERT INTO results ({_RESULT_COLUMNS}) "
    f"VALUES ({', '.join('%s' for _ in RESULT_COLUMN_NAMES)}) ON CONFLICT (result_id) DO NOTHING"
)

_NEWER = 'excluded.last_seen COLLATE "C" >= COALESCE(devices.last_seen, \'\') COLLATE "C"'
DEVICE_UPSERT_SQL = f"""
INSERT INTO devices (device_id, hostname, board, arch, cpu_model, cpu_cores, ram_mb, os, kernel,
  agent_version, tags, facts, online, state, first_seen, last_seen, last_reason, outbox_pending,
  outbox_dropped, current_job)
VALUES (%(device_id)s, %(hostname)s, %(board)s, %(arch)s, %(cpu_model)s, %(cpu_cores)s, %(ram_mb)s, %(os)s,
  %(kernel)s, %(agent_version)s, %(tags)s, %(facts)s, %(online)s, %(state)s, %(at)s, %(at)s, %(reason)s,
  %(outbox_pending)s, %(outbox_dropped)s, %(current_job)s)
ON CONFLICT (device_id) DO UPDATE SET
  hostname = COALESCE(excluded.hostname, devices.hostname),
  board = COALESCE(excluded.board, devices.board),
  arch = COALESCE(excluded.arch, devices.arch),
  cpu_model = COALESCE(excluded.cpu_model, devices.cpu_model),
  cpu_cores = COALESCE(excluded.cpu_cores, devices.cpu_cores),
  ram_mb = COALESCE(excluded.ram_mb, devices.ram_mb),
  os = COALESCE(excluded.os, devices.os),
  kernel = COALESCE(excluded.kernel, devices.kernel),
  agent_version = COALESCE(excluded.agent_version, devices.agent_version),
  tags = COALESCE(excluded.tags, devices.tags),
  facts = COALESCE(excluded.facts, devices.facts),
  online = CASE WHEN {_NEWER} THEN excluded.online ELSE devices.online END,
  state = CASE WHEN {_NEWER} THEN excluded.state ELSE devices.state END,
  last_reason = CASE WHEN {_NEWER} THEN excluded.last_reason ELSE devices.last_reason END,
  last_seen = GREATEST(excluded.last_seen COLLATE "C", COALESCE(devices.last_seen, '') COLLATE "C"),
  outbox_pending = COALESCE(excluded.outbox_pending, devices.outbox_pending),
  outbox_dropped = COALESCE(excluded.outbox_dropped, devices.outbox_dropped),
  current_job = CASE WHEN {_NEWER} THEN excluded.current_job ELSE devices.current_job END
"""

JOB_EVENT_SQL = (
    "INSERT INTO job_events (job_id, device_id, state, at, detail, result_ids, progress, received_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)
DEAD_LETTER_SQL = "INSERT INTO dead_letters (topic, reason, excerpt, received_at) VALUES (%s, %s, %s, %s)"
HEALTH_UPSERT_SQL = (
    f"INSERT INTO collector_health ({', '.join(HEALTH_COLUMNS)}) "
    f"VALUES ({', '.join('%s' for _ in HEALTH_COLUMNS)}) ON CONFLICT (client_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in HEALTH_COLUMNS[1:])
)
JOB_SQL = (
    "INSERT INTO jobs (job_id, created_at, target, settings, artifacts, state, key_id) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (job_id) DO UPDATE SET state = excluded.state"
)
ARTIFACT_SQL = """
INSERT INTO artifacts (sha256, name, format, "precision", size_bytes, model, variant, source, path, fidelity,
  registered_at)
VALUES (%(sha256)s, %(name)s, %(format)s, %(precision)s, %(size_bytes)s, %(model)s, %(variant)s, %(source)s,
  %(path)s, %(fidelity)s, %(registered_at)s)
ON CONFLICT (sha256) DO UPDATE SET
  name = excluded.name, path = COALESCE(excluded.path, artifacts.path), source = excluded.source,
  fidelity = COALESCE(excluded.fidelity, artifacts.fidelity), model = excluded.model,
  variant = excluded.variant, "precision" = excluded."precision"
"""

# SQLSTATEs that are the database's state, not the row's: retry (class 08 connection, 40 rollback,
# 53 resources, 57 operator intervention, 58 I/O are psycopg.OperationalError already).
_TRANSIENT_STATES = (
    errors.ReadOnlySqlTransaction,  # a standby, or default_transaction_read_only
    errors.UndefinedTable,  # the schema is missing (dropped, or a restore in progress)
    errors.InsufficientPrivilege,
)


def classify(exc: BaseException) -> ErrorKind:
    """What a failed batch means: :data:`TRANSIENT` (the server cannot be written now: connection lost,
    shut down, read-only, full, deadlock or serialization failure; retry, acknowledge nothing),
    :data:`REFUSED` (PostgreSQL refused the data: a value it cannot hold, such as a NUL in a text,
    or a constraint), :data:`INTERNAL` (anything else: a bug or a poison message)."""
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, *_TRANSIENT_STATES)):
        return TRANSIENT
    if isinstance(exc, psycopg.Error):
        return REFUSED
    return INTERNAL


def _text(value: str) -> str:
    """PostgreSQL text cannot hold U+0000: escaped (dead letters keep what arrived, readable)."""
    return value.replace("\x00", "\\u0000")


def job_row(job: Job, state: str) -> tuple[Any, ...]:
    return (
        job.job_id,
        job.created_at,
        job.target,
        json.dumps(encode(job.settings), separators=(",", ":")),
        json.dumps(encode(job.artifacts), separators=(",", ":")),
        state,
        job.key_id,
    )


class PostgresTransaction:
    """:class:`collector.store.api.StoreTransaction` on a connection inside one transaction."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def _many(self, statement: str, rows: Sequence[Any]) -> int:
        if not rows:
            return 0
        with self.conn.cursor() as cur:
            cur.executemany(statement, rows)
            return max(cur.rowcount, 0)

    def insert_results(self, records: Sequence[ResultRecord], texts: Sequence[str | None], at: str) -> int:
        rows = [result_row(r, at, t) for r, t in zip(records, texts, strict=True)]
        return self._many(INSERT_RESULT_SQL, rows)

    def upsert_statuses(self, statuses: Iterable[DeviceStatus]) -> None:
        self._many(DEVICE_UPSERT_SQL, [device_params(s) for s in statuses])

    def insert_job_events(self, events: Sequence[JobEvent], at: str) -> int:
        return self._many(JOB_EVENT_SQL, [job_event_row(e, at) for e in events])

    def insert_dead_letters(self, letters: Sequence[DeadLetter], at: str) -> None:
        rows = [dead_letter_row(d.topic, d.reason, d.payload, at) for d in letters]
        self._many(DEAD_LETTER_SQL, [tuple(_text(v) for v in row) for row in rows])

    def write_health(self, row: HealthRow) -> None:
        self.conn.execute(HEALTH_UPSERT_SQL, health_params(row))


class PostgresStore:
    """:class:`collector.store.api.ResultStore` on one connection to ``url`` (``postgresql://...``),
    reopened after it broke. Also the :class:`collector.store.api.BatchTarget` ingest writes through."""

    def __init__(self, url: str, *, connect_timeout_s: float = 10.0) -> None:
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self._conn: psycopg.Connection | None = None
        self._lock = threading.RLock()  # one transaction at a time on the connection

    @classmethod
    def open(cls, url: str, *, migrate: bool = True, **kw: Any) -> PostgresStore:
        """Connect and apply every migration: StoreError if the server cannot be used."""
        store = cls(url, **kw)
        try:
            conn = store.connection()
            if migrate:
                apply_migrations(conn)
        except MigrationError:
            store.close()
            raise
        except psycopg.Error as exc:
            store.close()
            raise StoreError(f"cannot use the PostgreSQL database: {exc}") from None  # no password
        return store

    def connection(self) -> psycopg.Connection:
        """The connection (autocommit; transactions are explicit), opened anew if closed or broken."""
        with self._lock:
            if self._conn is not None and (self._conn.closed or self._conn.broken):
                self._drop()
            if self._conn is None:
                self._conn = psycopg.connect(
                    self.url, autocommit=True, connect_timeout=max(1, round(self.connect_timeout_s))
                )
            return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[PostgresTransaction]:
        """BEGIN ... COMMIT; rolled back on any exception."""
        with self._lock:
            conn = self.connection()
            with conn.transaction():
                yield PostgresTransaction(conn)

    # ------------------------------------------------------------ BatchTarget (ingest)
    def classify(self, exc: BaseException) -> ErrorKind:
        return classify(exc)

    def write(self, fn: Callable[[Begin], T], stop: threading.Event) -> T:
        """Run ``fn(self.transaction)`` until it returns (its transactions committed); only then return.
        A transient error (see :func:`classify`) is retried with backoff (0.05 s doubling to 10 s) on a
        new connection if the old one broke; once ``stop`` is set it gives up after a few quick attempts
        with StoreError: nothing was acknowledged, the broker redelivers. A retry after a connection lost
        in COMMIT may find the batch committed: the primary keys absorb it (counted as duplicates)."""
        delay = 0.05
        while True:
            try:
                return fn(self.transaction)
            except Exception as exc:
                if classify(exc) != TRANSIENT:
                    raise
                log.warning("database not written (%s); retrying in %.1fs", exc, delay)
                with self._lock:
                    if self._conn is not None and (self._conn.closed or self._conn.broken):
                        self._drop()
                if stop.wait(delay) and delay > 5:
                    raise StoreError(f"stopped while the database cannot be written ({exc})") from None
                delay = min(delay * 2, 10.0)

    # ------------------------------------------------------------ ResultStore
    def _run(self, statement: str, rows: Sequence[Any]) -> int:
        with self.transaction() as tx:
            return tx._many(statement, rows)

    def insert_results(self, records: Iterable[ResultRecord], received_at: str | None = None) -> int:
        at = received_at or utc_now()
        return self._run(INSERT_RESULT_SQL, [result_row(r, at) for r in records])

    def upsert_device(self, status: DeviceStatus) -> None:
        self._run(DEVICE_UPSERT_SQL, [device_params(status)])

    def insert_job_events(self, events: Iterable[JobEvent], received_at: str | None = None) -> int:
        at = received_at or utc_now()
        return self._run(JOB_EVENT_SQL, [job_event_row(e, at) for e in events])

    def record_job(self, job: Job, state: str = "published") -> None:
        self._run(JOB_SQL, [job_row(job, state)])

    def set_job_state(self, job_id: str, state: str) -> None:
        self._run("UPDATE jobs SET state = %s WHERE job_id = %s", [(state, job_id)])

    def register_artifact(
        self,
        info: ArtifactInfo | ArtifactRef,
        *,
        path: str | Path | None = None,
        source: str = "",
        fidelity: dict[str, Any] | None = None,
        registered_at: str | None = None,
    ) -> None:
        self._run(ARTIFACT_SQL, [artifact_params(info, path, source, fidelity, registered_at)])

    def artifact_path(self, sha256: str) -> Path | None:
        with self._lock:
            row = (
                self.connection()
                .execute("SELECT path FROM artifacts WHERE sha256 = %s", (sha256,))
                .fetchone()
            )
        return Path(row[0]) if row and row[0] else None

    def count(self, table: str) -> int:
        query = sql.SQL("SELECT COUNT(*) FROM {}").format(sql.Identifier(table))
        with self._lock:
            row = self.connection().execute(query).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock:
            self._drop()
