"""The collector's SQLite store: open (WAL, migrations applied) and write results, devices, jobs.

Every writer here is idempotent where the wire can repeat itself: results are keyed by
``result_id`` and inserted with ``INSERT ... ON CONFLICT DO NOTHING`` so MQTT redeliveries are
absorbed. Functions take a :class:`sqlite_utils.Database` from :func:`open_db`; the ones named
``*_rows`` only build rows and never touch the database, so the ingest writer can batch them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sqlite_utils

from collector.store.migrations import RESULT_COLUMN_NAMES, apply_migrations
from wire.codec import encode
from wire.errors import EdgebenchError
from wire.schema import (
    ArtifactInfo,
    ArtifactRef,
    DeviceStatus,
    Job,
    JobEvent,
    ResultRecord,
    utc_now,
)


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


def _throttled(record: ResultRecord) -> int | None:
    board = record.board
    if board is None:
        return None
    flags = [
        board.throttled_now,
        *(bool(s.throttled & 0xF) for s in board.samples if s.throttled is not None),
    ]
    known = [f for f in flags if f is not None]
    if not known:
        return None
    return int(any(known))


def result_row(record: ResultRecord, received_at: str, record_json: str | None = None) -> tuple[Any, ...]:
    """The ``results`` row for one record, in :data:`RESULT_COLUMN_NAMES` order.

    ``record_json`` is the message as received (already validated); it is re-encoded when absent.
    """
    a, c, lat = record.artifact, record.config, record.latency
    cs, mem, cpu, en, b, acc = (
        record.cold_start,
        record.memory,
        record.cpu,
        record.energy,
        record.board,
        record.accuracy,
    )
    return (
        record.result_id,
        record.device.device_id,
        a.model,
        a.name,
        a.sha256,
        a.variant,
        a.format,
        a.precision,
        a.size_bytes,
        c.runtime,
        c.runtime_version,
        c.threads,
        c.batch,
        record.status,
        record.error,
        lat.n if lat else None,
        lat.mean_ms if lat else None,
        lat.std_ms if lat else None,
        lat.cv if lat else None,
        lat.min_ms if lat else None,
        lat.p50_ms if lat else None,
        lat.p50_ci_low_ms if lat else None,
        lat.p50_ci_high_ms if lat else None,
        lat.p90_ms if lat else None,
        lat.p99_ms if lat else None,
        lat.max_ms if lat else None,
        lat.throughput_ips if lat else None,
        int(lat.stable) if lat else None,
        cs.load_ms if cs else None,
        cs.first_inference_ms if cs else None,
        mem.load_peak_mb if mem else None,
        mem.inference_peak_mb if mem else None,
        cpu.cpu_s_per_inference if cpu else None,
        en.joules_per_inference if en else None,
        en.method if en else None,
        en.avg_power_w if en else None,
        b.temp_start_c if b else None,
        b.temp_max_c if b else None,
        b.temp_end_c if b else None,
        b.freq_start_mhz if b else None,
        b.freq_end_mhz if b else None,
        _throttled(record),
        acc.metric if acc else None,
        acc.value if acc else None,
        acc.delta if acc else None,
        record.job_id,
        record.started_at,
        record.finished_at,
        received_at,
        record_json if record_json is not None else record.to_json(),
        len(record.profile),
    )


INSERT_RESULT_SQL = (
    f"INSERT INTO results ({', '.join(f'[{c}]' for c in RESULT_COLUMN_NAMES)}) "
    f"VALUES ({', '.join('?' for _ in RESULT_COLUMN_NAMES)}) ON CONFLICT(result_id) DO NOTHING"
)


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

DEVICE_UPSERT_SQL = """
INSERT INTO devices (device_id, hostname, board, arch, cpu_model, cpu_cores, ram_mb, os, kernel,
  agent_version, tags, facts, online, state, first_seen, last_seen, last_reason, outbox_pending,
  outbox_dropped, current_job)
VALUES (:device_id, :hostname, :board, :arch, :cpu_model, :cpu_cores, :ram_mb, :os, :kernel,
  :agent_version, :tags, :facts, :online, :state, :at, :at, :reason, :outbox_pending, :outbox_dropped,
  :current_job)
ON CONFLICT(device_id) DO UPDATE SET
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
  online = CASE WHEN excluded.last_seen >= COALESCE(devices.last_seen, '') THEN excluded.online
           ELSE devices.online END,
  state = CASE WHEN excluded.last_seen >= COALESCE(devices.last_seen, '') THEN excluded.state
          ELSE devices.state END,
  last_reason = CASE WHEN excluded.last_seen >= COALESCE(devices.last_seen, '') THEN excluded.last_reason
                ELSE devices.last_reason END,
  last_seen = MAX(excluded.last_seen, COALESCE(devices.last_seen, '')),
  outbox_pending = COALESCE(excluded.outbox_pending, devices.outbox_pending),
  outbox_dropped = COALESCE(excluded.outbox_dropped, devices.outbox_dropped),
  current_job = CASE WHEN excluded.last_seen >= COALESCE(devices.last_seen, '') THEN excluded.current_job
                ELSE devices.current_job END
"""


def device_params(status: DeviceStatus) -> dict[str, Any]:
    """Named parameters of :data:`DEVICE_UPSERT_SQL` for one status message.

    A status without facts (a last will, a heartbeat) keeps the facts already stored. A message older
    than the stored ``last_seen`` (a late retained message) never flips the online state back.
    """
    f = status.facts
    tags = status.tags or (f.tags if f else ())
    return {
        "device_id": status.device_id,
        "hostname": f.hostname if f else None,
        "board": f.board if f else None,
        "arch": f.arch if f else None,
        "cpu_model": f.cpu_model if f else None,
        "cpu_cores": f.cpu_cores if f else None,
        "ram_mb": f.ram_mb if f else None,
        "os": f.os if f else None,
        "kernel": f.kernel if f else None,
        "agent_version": f.agent_version if f else None,
        "tags": json.dumps(list(tags)) if (tags or f) else None,
        "facts": json.dumps(encode(f), separators=(",", ":")) if f else None,
        "online": 1 if status.state == "online" else 0,
        "state": status.state,
        "at": status.at,
        "reason": status.reason,
        "outbox_pending": status.outbox_pending,
        "outbox_dropped": status.outbox_dropped,
        "current_job": status.current_job,
    }


def upsert_device(db: sqlite_utils.Database, status: DeviceStatus) -> None:
    with db.atomic():
        db.conn.execute(DEVICE_UPSERT_SQL, device_params(status))


# ---------------------------------------------------------------- jobs, events, artifacts

JOB_EVENT_SQL = (
    "INSERT OR IGNORE INTO job_events "
    "(job_id, device_id, state, at, detail, result_ids, progress, received_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def job_event_row(event: JobEvent, received_at: str) -> tuple[Any, ...]:
    return (
        event.job_id,
        event.device_id,
        event.state,
        event.at,
        event.detail,
        json.dumps(list(event.result_ids)),
        event.progress,
        received_at,
    )


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
    row = {
        "sha256": info.sha256,
        "name": info.name,
        "format": info.format,
        "precision": info.precision,
        "size_bytes": info.size_bytes,
        "model": info.model,
        "variant": info.variant,
        "source": source,
        "path": str(path) if path is not None else None,
        "fidelity": json.dumps(fidelity) if fidelity is not None else None,
        "registered_at": registered_at or utc_now(),
    }
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


# ---------------------------------------------------------------- dead letters

DEAD_LETTER_SQL = "INSERT INTO dead_letters (topic, reason, excerpt, received_at) VALUES (?, ?, ?, ?)"
EXCERPT_BYTES = 512


def excerpt(payload: bytes, limit: int = EXCERPT_BYTES) -> str:
    """A bounded, printable excerpt of a payload for the dead-letter table."""
    text = payload[:limit].decode("utf-8", errors="replace")
    return text + (f"... ({len(payload)} bytes)" if len(payload) > limit else "")


def dead_letter_row(topic: str, reason: str, payload: bytes, received_at: str) -> tuple[str, str, str, str]:
    return (topic, reason[:500], excerpt(payload), received_at)


def count(db: sqlite_utils.Database, table: str) -> int:
    return int(db.conn.execute(f"SELECT COUNT(*) FROM [{table}]").fetchone()[0])
