"""The collector's SQLite store: open (WAL, migrations applied) and write results, devices, jobs.

Every writer here is idempotent where the wire can repeat itself: results are keyed by
``result_id`` and inserted with ``INSERT ... ON CONFLICT DO NOTHING`` so MQTT redeliveries are
absorbed. Functions take a :class:`sqlite_utils.Database` from :func:`open_db`; the rows and
statements come from :mod:`collector.store.sqlite_rows` (re-exported here). :class:`SqliteStore` is
the same store as the :class:`collector.store.api.ResultStore` interface, on one connection.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlite_utils

from collector.store.api import DeadLetter, HealthRow
from collector.store.migrations import apply_migrations
from collector.store.sqlite_rows import (
    DEAD_LETTER_SQL,
    DEVICE_UPSERT_SQL,
    EXCERPT_BYTES,
    HEALTH_UPSERT_SQL,
    INSERT_RESULT_SQL,
    JOB_EVENT_SQL,
    artifact_params,
    dead_letter_row,
    device_params,
    excerpt,
    health_params,
    job_event_row,
    result_row,
)
from wire.codec import encode
from wire.errors import EdgebenchError
from wire.schema import ArtifactInfo, ArtifactRef, DeviceStatus, Job, JobEvent, ResultRecord, utc_now

__all__ = [
    "DEAD_LETTER_SQL",
    "DEVICE_UPSERT_SQL",
    "EXCERPT_BYTES",
    "HEALTH_UPSERT_SQL",
    "INSERT_RESULT_SQL",
    "JOB_EVENT_SQL",
    "SQLITE_HEADER",
    "SqliteStore",
    "SqliteTransaction",
    "StoreError",
    "artifact_path",
    "connect",
    "count",
    "dead_letter_row",
    "device_params",
    "excerpt",
    "health_params",
    "insert_job_events",
    "insert_result_rows",
    "insert_results",
    "job_event_row",
    "open_db",
    "open_readonly",
    "record_job",
    "register_artifact",
    "require_database",
    "result_row",
    "set_job_state",
    "transaction",
    "upsert_device",
]


class StoreError(EdgebenchError, RuntimeError):
    """The database cannot be opened or written."""


def connect(path: str | Path, *, timeout_s: float = 30.0, readonly: bool = False) -> sqlite3.Connection:
    """A raw sqlite3 connection usable from any thread (one thread at a time)."""
    try:
        if readonly:
            conn = sqlite3.connect(
                f"file:{Path(path)}?mode=ro", uri=True, timeout=timeout_s, check_same_thread=False
            )
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), timeout=timeout_s, check_same_thread=False)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from None
    conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
    return conn


def open_db(
    path: str | Path, *, synchronous: str = "NORMAL", migrate: bool = True, timeout_s: float = 30.0
) -> sqlite_utils.Database:
    """Open (creating if needed) the collector database in WAL mode with every migration applied.

    ``synchronous="NORMAL"`` in WAL mode survives a killed process (kill -9) without losing a
    committed transaction: the commit has written the WAL frames to the OS, only the fsync is
    deferred (to checkpoints). That is what ack-after-commit needs against collector crashes, and it
    saves an fsync per batch. The trade-off: an OS crash or power cut can roll back the last
    transactions before the next checkpoint, and those messages were already acknowledged, so the
    broker will not redeliver them. Pass ``"FULL"`` (an fsync per commit) to survive that as well.
    """
    conn = connect(path, timeout_s=timeout_s)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot switch {path} to WAL mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        if migrate:
            apply_migrations(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"cannot use database {path}: {exc}") from None
    return sqlite_utils.Database(conn)


SQLITE_HEADER = b"SQLite format 3\x00"


def require_database(path: str | Path) -> None:
    """StoreError unless ``path`` is an existing SQLite file: what a read command checks before it
    opens anything, so that a missing, empty or foreign file is reported, never created or migrated."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        raise StoreError(f"no database at {path}") from None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from None
    if not header:
        raise StoreError(f"{path} is an empty file, not a collector database")
    if header != SQLITE_HEADER:
        raise StoreError(f"{path} is not an SQLite database")


def open_readonly(path: str | Path, *, timeout_s: float = 10.0) -> sqlite_utils.Database:
    """A read-only handle for status and reports (never creates the file)."""
    require_database(path)
    return sqlite_utils.Database(connect(path, timeout_s=timeout_s, readonly=True))


# ---------------------------------------------------------------- results


def insert_result_rows(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> int:
    """Insert prepared rows (caller owns the transaction); return how many were new."""
    if not rows:
        return 0
    before = conn.total_changes
    conn.executemany(INSERT_RESULT_SQL, rows)
    return conn.total_changes - before


def insert_results(
    db: sqlite_utils.Database, records: Iterable[ResultRecord], received_at: str | None = None
) -> int:
    """Insert records in one transaction; duplicates (same ``result_id``) are ignored.

    Returns the number of rows actually inserted.
    """
    at = received_at or utc_now()
    rows = [result_row(r, at) for r in records]
    with db.atomic():
        return insert_result_rows(db.conn, rows)


# ---------------------------------------------------------------- devices


def upsert_device(db: sqlite_utils.Database, status: DeviceStatus) -> None:
    with db.atomic():
        db.conn.execute(DEVICE_UPSERT_SQL, device_params(status))


# ---------------------------------------------------------------- jobs, events, artifacts


def insert_job_events(
    db: sqlite_utils.Database, events: Iterable[JobEvent], received_at: str | None = None
) -> int:
    at = received_at or utc_now()
    rows = [job_event_row(e, at) for e in events]
    with db.atomic():
        before = db.conn.total_changes
        db.conn.executemany(JOB_EVENT_SQL, rows)
        return db.conn.total_changes - before


def record_job(db: sqlite_utils.Database, job: Job, state: str = "published") -> None:
    """Store (or update the state of) a job the collector published."""
    row = (
        job.job_id,
        job.created_at,
        job.target,
        json.dumps(encode(job.settings), separators=(",", ":")),
        json.dumps(encode(job.artifacts), separators=(",", ":")),
        state,
        job.key_id,
    )
    with db.atomic():
        db.conn.execute(
            "INSERT INTO jobs (job_id, created_at, target, settings, artifacts, state, key_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(job_id) DO UPDATE SET state = excluded.state",
            row,
        )


def set_job_state(db: sqlite_utils.Database, job_id: str, state: str) -> None:
    with db.atomic():
        db.conn.execute("UPDATE jobs SET state = ? WHERE job_id = ?", (state, job_id))


def register_artifact(
    db: sqlite_utils.Database,
    info: ArtifactInfo | ArtifactRef,
    *,
    path: str | Path | None = None,
    source: str = "",
    fidelity: dict[str, Any] | None = None,
    registered_at: str | None = None,
) -> None:
    """Insert or refresh an artifact by sha256 (the path is updated: it is where chunks are served from)."""
    row = artifact_params(info, path, source, fidelity, registered_at)
    with db.atomic():
        db.conn.execute(
            "INSERT INTO artifacts (sha256, name, format, precision, size_bytes, model, variant, source, "
            "path, fidelity, registered_at) VALUES (:sha256, :name, :format, :precision, :size_bytes, "
            ":model, "
            ":variant, :source, :path, :fidelity, :registered_at) ON CONFLICT(sha256) DO UPDATE SET "
            "name = excluded.name, path = COALESCE(excluded.path, artifacts.path), "
            "source = excluded.source, fidelity = COALESCE(excluded.fidelity, artifacts.fidelity), "
            "model = excluded.model, variant = excluded.variant, precision = excluded.precision",
            row,
        )


def artifact_path(db: sqlite_utils.Database, sha256: str) -> Path | None:
    row = db.conn.execute("SELECT path FROM artifacts WHERE sha256 = ?", (sha256,)).fetchone()
    return Path(row[0]) if row and row[0] else None


# ---------------------------------------------------------------- reads


def count(db: sqlite_utils.Database, table: str) -> int:
    return int(db.conn.execute(f"SELECT COUNT(*) FROM [{table}]").fetchone()[0])


# ---------------------------------------------------------------- the ResultStore interface


class SqliteTransaction:
    """:class:`collector.store.api.StoreTransaction` on a connection inside ``BEGIN IMMEDIATE``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def insert_results(self, records: Sequence[ResultRecord], texts: Sequence[str | None], at: str) -> int:
        return insert_result_rows(
            self.conn, [result_row(r, at, t) for r, t in zip(records, texts, strict=True)]
        )

    def upsert_statuses(self, statuses: Iterable[DeviceStatus]) -> None:
        for status in statuses:
            self.conn.execute(DEVICE_UPSERT_SQL, device_params(status))

    def insert_job_events(self, events: Sequence[JobEvent], at: str) -> int:
        if not events:
            return 0
        before = self.conn.total_changes
        self.conn.executemany(JOB_EVENT_SQL, [job_event_row(e, at) for e in events])
        return self.conn.total_changes - before

    def insert_dead_letters(self, letters: Sequence[DeadLetter], at: str) -> None:
        if letters:
            rows = [dead_letter_row(d.topic, d.reason, d.payload, at) for d in letters]
            self.conn.executemany(DEAD_LETTER_SQL, rows)

    def write_health(self, row: HealthRow) -> None:
        self.conn.execute(HEALTH_UPSERT_SQL, health_params(row))


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[SqliteTransaction]:
    """``BEGIN IMMEDIATE`` (waits for the write lock) ... ``COMMIT``; rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield SqliteTransaction(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class SqliteStore:
    """:class:`collector.store.api.ResultStore` on one database (:func:`open_db`) or connection.

    The module-level functions are the same operations on a :class:`sqlite_utils.Database`."""

    def __init__(self, db: sqlite_utils.Database | sqlite3.Connection) -> None:
        self.db = db if isinstance(db, sqlite_utils.Database) else sqlite_utils.Database(db)

    @classmethod
    def open(cls, path: str | Path, **kw: Any) -> SqliteStore:
        """:func:`open_db` (created, WAL, migrated) as a store."""
        return cls(open_db(path, **kw))

    def transaction(self) -> contextlib.AbstractContextManager[SqliteTransaction]:
        return transaction(self.db.conn)

    def insert_results(self, records: Iterable[ResultRecord], received_at: str | None = None) -> int:
        return insert_results(self.db, records, received_at)

    def upsert_device(self, status: DeviceStatus) -> None:
        upsert_device(self.db, status)

    def insert_job_events(self, events: Iterable[JobEvent], received_at: str | None = None) -> int:
        return insert_job_events(self.db, events, received_at)

    def record_job(self, job: Job, state: str = "published") -> None:
        record_job(self.db, job, state)

    def set_job_state(self, job_id: str, state: str) -> None:
        set_job_state(self.db, job_id, state)

    def register_artifact(
        self,
        info: ArtifactInfo | ArtifactRef,
        *,
        path: str | Path | None = None,
        source: str = "",
        fidelity: dict[str, Any] | None = None,
        registered_at: str | None = None,
    ) -> None:
        register_artifact(
            self.db, info, path=path, source=source, fidelity=fidelity, registered_at=registered_at
        )

    def artifact_path(self, sha256: str) -> Path | None:
        return artifact_path(self.db, sha256)

    def count(self, table: str) -> int:
        return count(self.db, table)

    def close(self) -> None:
        self.db.close()
