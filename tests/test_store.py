"""collector.store.sqlite / collector.store.migrations on real SQLite files."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest

from collector.store.migrations import (
    MIGRATIONS,
    RESULT_COLUMN_NAMES,
    Migration,
    MigrationError,
    apply_migrations,
)
from collector.store.sqlite import (
    count,
    insert_job_events,
    insert_results,
    open_db,
    open_readonly,
    register_artifact,
    upsert_device,
)
from testkit.records import SHA, make_record, make_status
from wire.schema import ArtifactRef, JobEvent, new_id

CONTRACT_RESULT_COLUMNS = (
    "result_id",
    "device_id",
    "model",
    "artifact_name",
    "artifact_sha256",
    "variant",
    "format",
    "precision",
    "size_bytes",
    "runtime",
    "runtime_version",
    "threads",
    "batch",
    "status",
    "error",
    "n",
    "mean_ms",
    "std_ms",
    "cv",
    "min_ms",
    "p50_ms",
    "p50_ci_low_ms",
    "p50_ci_high_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "throughput_ips",
    "stable",
    "load_ms",
    "first_inference_ms",
    "load_peak_mb",
    "inference_peak_mb",
    "cpu_s_per_inference",
    "energy_j_per_inference",
    "energy_method",
    "avg_power_w",
    "temp_start_c",
    "temp_max_c",
    "temp_end_c",
    "freq_start_mhz",
    "freq_end_mhz",
    "throttled",
    "accuracy_metric",
    "accuracy_value",
    "accuracy_delta",
    "job_id",
    "started_at",
    "finished_at",
    "received_at",
    "record",
    "profile_ops",  # migration 4
)


def test_migrations_from_empty_db_and_rerun(db_path):
    db = open_db(db_path)
    assert (
        [c.name for c in db["results"].columns] == list(CONTRACT_RESULT_COLUMNS) == list(RESULT_COLUMN_NAMES)
    )
    for table in ("devices", "jobs", "job_events", "artifacts", "dead_letters", "schema_migrations"):
        assert db[table].exists(), table
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    versions = [r[0] for r in db.conn.execute("SELECT version FROM schema_migrations")]
    assert versions == [m.version for m in MIGRATIONS]
    insert_results(db, [make_record()])
    db.close()
    # Re-run: nothing applied, data kept.
    conn = sqlite3.connect(db_path)
    assert apply_migrations(conn) == []
    assert conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == len(MIGRATIONS)


def test_later_migration_applies_once_and_newer_db_is_refused(db_path):
    open_db(db_path).close()
    conn = sqlite3.connect(db_path)
    extra = (*MIGRATIONS, Migration(99, "test column", ("ALTER TABLE devices ADD COLUMN note TEXT",)))
    assert apply_migrations(conn, extra) == [99]
    assert apply_migrations(conn, extra) == []
    assert "note" in [r[1] for r in conn.execute("PRAGMA table_info(devices)")]
    with pytest.raises(MigrationError, match="newer than this build"):
        apply_migrations(conn, MIGRATIONS)


def test_insert_results_ignores_duplicates_and_fills_columns(db_path):
    db = open_db(db_path)
    first = [make_record(f"dev-{i % 3}", job_id=new_id()) for i in range(10)]
    assert insert_results(db, first, received_at="2025-01-02T00:00:00.000Z") == 10
    assert insert_results(db, [*first[:5], make_record()]) == 1
    assert count(db, "results") == 11
    row = db.execute("SELECT * FROM results WHERE result_id = ?", [first[0].result_id]).fetchone()
    named = dict(zip(RESULT_COLUMN_NAMES, row, strict=True))
    assert named["device_id"] == "dev-0" and named["p50_ms"] == 1.5 and named["stable"] == 1
    assert named["load_peak_mb"] == 80.0 and named["temp_max_c"] == 55.0 and named["throttled"] == 0
    assert named["received_at"] == "2025-01-02T00:00:00.000Z"
    assert json.loads(named["record"])["result_id"] == first[0].result_id
    failed = make_record(status="failed")
    insert_results(db, [failed])
    row = db.execute("SELECT status, error, p50_ms FROM results WHERE result_id = ?", [failed.result_id])
    assert row.fetchone() == ("failed", "boom", None)


def test_device_upsert_keeps_facts_and_ignores_stale_status(db_path):
    db = open_db(db_path)
    upsert_device(db, make_status(at="2025-01-01T00:00:00.000Z"))
    upsert_device(
        db,
        make_status(state="offline", reason="last-will", facts=False, tags=(), at="2025-01-01T00:05:00.000Z"),
    )
    row = db["devices"].get("dev-1")
    assert row["online"] == 0 and row["board"] == "test board" and json.loads(row["tags"]) == ["lab"]
    assert row["first_seen"] == "2025-01-01T00:00:00.000Z" and row["last_seen"] == "2025-01-01T00:05:00.000Z"
    # A late (older) online message does not flip it back.
    upsert_device(db, make_status(at="2025-01-01T00:01:00.000Z", reason="heartbeat"))
    assert db["devices"].get("dev-1")["online"] == 0


def test_job_events_and_artifacts(db_path):
    db = open_db(db_path)
    job_id = new_id()
    insert_job_events(db, [JobEvent(job_id=job_id, device_id="dev-1", state="running", at="t", progress=0.5)])
    assert db["job_events"].count == 1
    ref = ArtifactRef(name="m.onnx", sha256=SHA, size_bytes=10, format="onnx")
    register_artifact(db, ref, path="/tmp/m.onnx", source="file")
    register_artifact(db, ref, source="again")
    assert db["artifacts"].get(SHA)["path"] == "/tmp/m.onnx"


def test_concurrent_readers_while_writing(db_path):
    db = open_db(db_path)
    stop = threading.Event()
    seen: list[list[int]] = [[], []]
    errors: list[BaseException] = []

    def reader(out: list[int]) -> None:
        try:
            ro = open_readonly(db_path)
            while not stop.is_set():
                out.append(count(ro, "results"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(out,)) for out in seen]
    for t in threads:
        t.start()
    try:
        for _ in range(20):
            insert_results(db, [make_record() for _ in range(50)])
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert not errors
    for out in seen:  # each reader sees whole transactions only, never going back
        assert out and out == sorted(out)
        assert all(n % 50 == 0 and 0 <= n <= 1000 for n in out)
    assert count(db, "results") == 1000


def test_the_sqlite_store_implements_the_store_interface():
    """collector/store/api.py is the interface a second backend implements: SqliteStore and its
    transaction have every method the protocols name, with the same parameters."""
    import inspect

    from collector.store.api import ResultStore, StoreTransaction
    from collector.store.sqlite import SqliteStore, SqliteTransaction

    for protocol, impl in ((ResultStore, SqliteStore), (StoreTransaction, SqliteTransaction)):
        names = [n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")]
        assert names, protocol
        for name in names:
            want = list(inspect.signature(getattr(protocol, name)).parameters)
            have = list(inspect.signature(getattr(impl, name)).parameters)
            assert have == want, f"{impl.__name__}.{name}{have} != {protocol.__name__}.{name}{want}"
