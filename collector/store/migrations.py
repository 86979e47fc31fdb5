"""Versioned schema migrations for the collector's SQLite database.

Each migration is a numbered list of SQL statements, applied once, in order, inside one
transaction together with its row in ``schema_migrations``. :func:`apply_migrations` is idempotent:
re-running it on an up-to-date database does nothing. Table and column names of version 1 are a
cross-team contract (reports read them): extend only by adding migrations, never by editing one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from wire.errors import EdgebenchError
from wire.schema import utc_now


class MigrationError(EdgebenchError, RuntimeError):
    """The database is newer than this build, or a migration failed."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


RESULT_COLUMNS_V1: tuple[tuple[str, str], ...] = (  # migration 1's table: the contract, never edited
    ("result_id", "TEXT PRIMARY KEY"),
    ("device_id", "TEXT NOT NULL"),
    ("model", "TEXT"),
    ("artifact_name", "TEXT"),
    ("artifact_sha256", "TEXT"),
    ("variant", "TEXT"),
    ("format", "TEXT"),
    ("precision", "TEXT"),
    ("size_bytes", "INTEGER"),
    ("runtime", "TEXT"),
    ("runtime_version", "TEXT"),
    ("threads", "INTEGER"),
    ("batch", "INTEGER"),
    ("status", "TEXT"),
    ("error", "TEXT"),
    ("n", "INTEGER"),
    ("mean_ms", "REAL"),
    ("std_ms", "REAL"),
    ("cv", "REAL"),
    ("min_ms", "REAL"),
    ("p50_ms", "REAL"),
    ("p50_ci_low_ms", "REAL"),
    ("p50_ci_high_ms", "REAL"),
    ("p90_ms", "REAL"),
    ("p99_ms", "REAL"),
    ("max_ms", "REAL"),
    ("throughput_ips", "REAL"),
    ("stable", "INTEGER"),
    ("load_ms", "REAL"),
    ("first_inference_ms", "REAL"),
    ("load_peak_mb", "REAL"),
    ("inference_peak_mb", "REAL"),
    ("cpu_s_per_inference", "REAL"),
    ("energy_j_per_inference", "REAL"),
    ("energy_method", "TEXT"),
    ("avg_power_w", "REAL"),
    ("temp_start_c", "REAL"),
    ("temp_max_c", "REAL"),
    ("temp_end_c", "REAL"),
    ("freq_start_mhz", "REAL"),
    ("freq_end_mhz", "REAL"),
    ("throttled", "INTEGER"),
    ("accuracy_metric", "TEXT"),
    ("accuracy_value", "REAL"),
    ("accuracy_delta", "REAL"),
    ("job_id", "TEXT"),
    ("started_at", "TEXT"),
    ("finished_at", "TEXT"),
    ("received_at", "TEXT"),
    ("record", "TEXT NOT NULL"),
)

# Columns added by later migrations, in the order they were added (an insert fills them all).
RESULT_COLUMNS: tuple[tuple[str, str], ...] = (
    *RESULT_COLUMNS_V1,
    ("profile_ops", "INTEGER"),  # migration 4: ops in the per-operator profile (0: none)
)

RESULT_COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in RESULT_COLUMNS)


def _create_results() -> str:
    cols = ",\n  ".join(f"[{name}] {decl}" for name, decl in RESULT_COLUMNS_V1)
    return f"CREATE TABLE IF NOT EXISTS results (\n  {cols}\n)"


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial schema: results, devices, jobs, job_events, artifacts, dead_letters",
        (
            _create_results(),
            # Report queries: per device, per model x device (covering the p50 aggregate), per artifact,
            # by time, by job.
            "CREATE INDEX IF NOT EXISTS idx_results_device ON results(device_id, finished_at)",
            "CREATE INDEX IF NOT EXISTS idx_results_model_device ON results"
            "(model, device_id, artifact_sha256, status, p50_ms)",
            "CREATE INDEX IF NOT EXISTS idx_results_artifact ON results(artifact_sha256, device_id)",
            "CREATE INDEX IF NOT EXISTS idx_results_finished ON results(finished_at)",
            "CREATE INDEX IF NOT EXISTS idx_results_job ON results(job_id)",
            """CREATE TABLE IF NOT EXISTS devices (
  device_id TEXT PRIMARY KEY,
  hostname TEXT, board TEXT, arch TEXT, cpu_model TEXT, cpu_cores INTEGER, ram_mb REAL,
  os TEXT, kernel TEXT, agent_version TEXT,
  tags TEXT,            -- JSON list
  facts TEXT,           -- JSON DeviceInfo
  online INTEGER NOT NULL DEFAULT 0,
  state TEXT,
  first_seen TEXT, last_seen TEXT, last_reason TEXT,
  outbox_pending INTEGER, outbox_dropped INTEGER, current_job TEXT
)""",
            """CREATE TABLE IF NOT EXISTS jobs (
  job_id TEXT PRIMARY KEY,
  created_at TEXT, target TEXT,
  settings TEXT,        -- JSON BenchSettings
  artifacts TEXT,       -- JSON list of ArtifactRef
  state TEXT, key_id TEXT
)""",
            "CREATE INDEX IF NOT EXISTS idx_jobs_created ON jobs(created_at)",
            """CREATE TABLE IF NOT EXISTS job_events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id TEXT NOT NULL, device_id TEXT NOT NULL, state TEXT NOT NULL, at TEXT,
  detail TEXT, result_ids TEXT, progress REAL, received_at TEXT
)""",
            "CREATE INDEX IF NOT EXISTS idx_job_events_job ON job_events(job_id, device_id, id)",
            """CREATE TABLE IF NOT EXISTS artifacts (
  sha256 TEXT PRIMARY KEY,
  name TEXT, format TEXT, precision TEXT, size_bytes INTEGER, model TEXT, variant TEXT,
  source TEXT, path TEXT,
  fidelity TEXT,        -- JSON from the converter's manifest
  registered_at TEXT
)""",
            """CREATE TABLE IF NOT EXISTS dead_letters (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  topic TEXT, reason TEXT, excerpt TEXT, received_at TEXT
)""",
            "CREATE INDEX IF NOT EXISTS idx_dead_letters_received ON dead_letters(received_at)",
        ),
    ),
    Migration(
        2,
        "report index (engineer F, collector/report_index.py): narrow per-run rows with a latency histogram",
        (
            """CREATE TABLE IF NOT EXISTS report_cells (
  cell_id INTEGER PRIMARY KEY,
  device_id TEXT NOT NULL, model TEXT, variant TEXT, artifact_name TEXT, artifact_sha256 TEXT,
  format TEXT, precision TEXT, size_bytes INTEGER, runtime TEXT, threads INTEGER, batch INTEGER,
  UNIQUE (device_id, artifact_sha256, runtime, threads, batch)
)""",
            """CREATE TABLE IF NOT EXISTS report_runs (
  cell_id INTEGER NOT NULL, finished_at TEXT NOT NULL, result_id TEXT NOT NULL,
  status TEXT, job_id TEXT, n INTEGER, p50_ms REAL, p50_ci_low_ms REAL, p50_ci_high_ms REAL,
  peak_mb REAL, energy_j REAL, energy_method TEXT, accuracy_delta REAL,
  raw INTEGER,          -- 1: hist from raw samples, 0: from recorded quantiles
  hist BLOB,            -- sparse log histogram, see collector/store/histograms.py
  PRIMARY KEY (cell_id, finished_at, result_id)
) WITHOUT ROWID""",
            "CREATE TABLE IF NOT EXISTS report_meta (key TEXT PRIMARY KEY, value)",
            """CREATE TABLE IF NOT EXISTS report_daily (
  cell_id INTEGER NOT NULL, day TEXT NOT NULL,  -- per-day rollup of the ok runs of report_runs
  runs INTEGER, n INTEGER, peak_mb REAL, energy_jn REAL, energy_n INTEGER, energy_method TEXT,
  acc_sum REAL, acc_count INTEGER, ci_low_ms REAL, ci_high_ms REAL, hist BLOB,
  PRIMARY KEY (cell_id, day)
) WITHOUT ROWID""",
        ),
    ),
    Migration(
        3,
        "job event redeliveries absorbed; collector health snapshot",
        (
            "CREATE UNIQUE INDEX IF NOT EXISTS idx_job_events_unique "
            "ON job_events(job_id, device_id, state, at)",
            """CREATE TABLE IF NOT EXISTS collector_health (
  client_id TEXT PRIMARY KEY,
  pid INTEGER, started_at TEXT, updated_at TEXT, connected INTEGER,
  received INTEGER, committed INTEGER, results_inserted INTEGER, results_duplicate INTEGER,
  dead_letters INTEGER, queue_depth INTEGER, rate_per_s REAL, lag_s REAL, chunks_served INTEGER
)""",
        ),
    ),
    Migration(
        4,
        "results.profile_ops: which results carry a per-operator profile (report ops), partial index",
        (
            "ALTER TABLE results ADD COLUMN profile_ops INTEGER",
            "UPDATE results SET profile_ops = json_array_length(record, '$.profile') "
            "WHERE instr(record, '\"profile\":[{') > 0",
            "CREATE INDEX IF NOT EXISTS idx_results_profiled ON results(profile_ops) WHERE profile_ops > 0",
        ),
    ),
)


def current_version(conn: sqlite3.Connection) -> int:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name TEXT, applied_at TEXT)"
    )
    row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0)


def apply_migrations(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Apply every migration newer than the database; return the versions applied (often none).

    Each migration runs in its own ``BEGIN IMMEDIATE`` transaction, so two processes starting at once
    serialise and the second one finds nothing left to do.
    """
    known = max((m.version for m in migrations), default=0)
    applied: list[int] = []
    for migration in sorted(migrations, key=lambda m: m.version):
        conn.execute("BEGIN IMMEDIATE")
        try:
            have = current_version(conn)
            if have > known:
                raise MigrationError(
                    f"the database is at schema version {have}, newer than this build ({known}): "
                    "upgrade edgebench"
                )
            if migration.version <= have:
                conn.execute("COMMIT")
                continue
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, utc_now()),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied.append(migration.version)
    if not migrations:
        current_version(conn)
    return applied
