"""`edgebench report latency|compare|ops` (every format, html included) never write the database they read.

The same outputs as after a refresh of the report index, read from: a database whose newest results
are not indexed yet (indexed in memory), one never indexed, one whose index needs a rebuild (rows
deleted), databases from before migrations 2 and 4 (read without migrating), a file and directory made
read-only (chmod; as root, in a process without CAP_DAC_OVERRIDE), and a database a collector is still
writing (WAL, its -shm/-wal in a read-only directory). Each time the file's bytes and mtime are checked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.reports.cli import report_group
from collector.store.migrations import MIGRATIONS, RESULT_COLUMNS_V1, apply_migrations
from collector.store.report_index import refresh_index
from collector.store.sqlite import insert_results, open_db, result_row
from testkit.report_records import make_record
from wire.schema import OpProfile

REPO = Path(__file__).resolve().parent.parent
JOB_A, JOB_B = str(uuid.UUID(int=11)), str(uuid.UUID(int=12))
COMMANDS = [
    ["latency", "-f", "json"],
    ["latency", "--max-accuracy-drop", "1"],
    ["latency", "-f", "csv", "--since", "2024-05-01T12:00:00Z", "--until", "2024-05-02T12:00:00Z"],
    ["latency", "--tag", "lab", "-f", "md", "--batch", "1"],
    ["latency", "-f", "html"],
    ["compare", f"job:{JOB_A}", f"job:{JOB_B}", "-f", "json"],
    ["compare", "..2024-05-01T23:00:00Z", "2024-05-02..", "--model", "digits-cnn", "-f", "csv"],
    ["ops", "-f", "json"],
    ["ops", "-f", "html"],
]
# Without the slow ones (html plots, the bootstrap of a whole-fleet compare): for most databases.
QUICK = [c for c in COMMANDS if "html" not in c and f"job:{JOB_A}" not in c]
pytestmark = pytest.mark.slow


def _records() -> list:
    recs = []
    for i, (dev, base, tag) in enumerate((("pi-a", 10.0, "lab"), ("pi-b", 20.0, "field"))):
        for k, variant in enumerate(("fp32", "int8-static", "tflite-int8")):
            for day, job in ((1, JOB_A), (2, JOB_B), (3, JOB_B)):
                rec = make_record(
                    dev, variant, base_ms=base * (1.2 if day > 1 else 1.0), seed=100 * i + 10 * k + day,
                    tags=(tag,), job_id=job, finished_at=f"2024-05-0{day}T1{k}:00:00.000Z",
                    keep_samples=day != 3,
                )  # fmt: skip
                if variant == "fp32":
                    ops = (OpProfile("Conv", "c1", 0.2, 0.7, "CPUExecutionProvider"),
                           OpProfile("Gemm", "fc", 0.1, 0.3, "CPUExecutionProvider"))  # fmt: skip
                    rec = replace(rec, profile=ops)
                recs.append(rec)
    recs.append(make_record("pi-a", "fp32", seed=999, status="failed", job_id=JOB_B, tags=("lab",)))
    return recs


RECORDS = _records()


def _normalise(args: list[str], output: str) -> str:
    """Outputs compared across databases: the report's own time left out."""
    if args[:1] == ["latency"] and "json" in args:
        data = json.loads(output)
        data.pop("generated_at")
        return json.dumps(data, sort_keys=True)
    return re.sub(r"generated [0-9T:.\-Z]+", "generated -", output)


def _run_here(db: Path, commands: list[list[str]] = COMMANDS) -> list[str]:
    out = []
    for args in commands:
        res = CliRunner().invoke(report_group, [*args, "--db", str(db)])
        assert res.exit_code == 0, (args, res.output)
        out.append(_normalise(args, res.output))
    return out


_CHILD = """
import json, sys
from click.testing import CliRunner
from collector.reports.cli import report_group
db, commands = sys.argv[1], json.loads(sys.argv[2])
print(json.dumps([(r.exit_code, r.output) for r in
                  (CliRunner().invoke(report_group, [*c, "--db", db]) for c in commands)]))
"""


def _run_without_write_permission(db: Path, commands: list[list[str]] = COMMANDS) -> list[str]:
    """The commands in a child process that the file permissions bind (root: no CAP_DAC_OVERRIDE)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot drop CAP_DAC_OVERRIDE")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", _CHILD, str(db), json.dumps(commands)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "MPLCONFIGDIR": str(db.parent.parent / "mpl")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for args, (code, output) in zip(commands, results, strict=True):
        assert code == 0, (args, output)
    return [_normalise(args, output) for args, (_, output) in zip(commands, results, strict=True)]


def _fingerprint(db: Path) -> tuple[bytes, int]:
    return db.read_bytes(), db.stat().st_mtime_ns


def _indexed(path: Path, records: list, *, indexed: int | None = None) -> Path:
    """A collector database holding ``records``, the first ``indexed`` of them indexed (None: all)."""
    db = open_db(path)
    cut = len(records) if indexed is None else indexed
    insert_results(db, records[:cut])
    refresh_index(db.conn)
    insert_results(db, records[cut:])
    db.conn.close()
    return path


def _old_schema(path: Path, migrations: int) -> Path:
    """A database migrated only to ``migrations`` (the results table of migration 1: no profile_ops)."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    apply_migrations(conn, MIGRATIONS[:migrations])
    names = [n for n, _ in RESULT_COLUMNS_V1]
    sql = f"INSERT INTO results ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    conn.executemany(sql, [result_row(r, "2024-05-04T00:00:00.000Z")[: len(names)] for r in RECORDS])
    conn.commit()
    conn.close()
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[str]:
    """The outputs over a database whose report index is up to date."""
    return _run_here(_indexed(tmp_path_factory.mktemp("ref") / "edgebench.db", RECORDS))


def _rows_deleted(path: Path) -> Path:
    extra = make_record("pi-b", "fp32", seed=4242, job_id=JOB_A)
    _indexed(path, [*RECORDS, extra])
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM results WHERE result_id = ?", (extra.result_id,))
    conn.commit()
    conn.close()
    return path


DATABASES = {
    "newest-results-not-indexed": lambda p: _indexed(p, RECORDS, indexed=len(RECORDS) // 2),
    "never-indexed": lambda p: _indexed(p, RECORDS, indexed=0),
    "index-needs-a-rebuild": _rows_deleted,
    "before-migration-2": lambda p: _old_schema(p, 1),
    "before-migration-4": lambda p: _old_schema(p, 3),
}


@pytest.mark.parametrize("kind", sorted(DATABASES))
def test_same_output_as_after_a_refresh_and_nothing_written(tmp_path, reference, kind):
    db = DATABASES[kind](tmp_path / "edgebench.db")
    before = _fingerprint(db)
    schema = sqlite3.connect(db).execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    commands = COMMANDS if kind == "newest-results-not-indexed" else QUICK
    assert _run_here(db, commands) == [reference[COMMANDS.index(c)] for c in commands]
    assert _fingerprint(db) == before
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == schema  # not migrated
    conn.close()


def test_read_only_file_in_a_read_only_directory(tmp_path, reference):
    folder = tmp_path / "ro"
    folder.mkdir()
    db = _indexed(folder / "edgebench.db", RECORDS, indexed=len(RECORDS) // 2)
    assert sorted(p.name for p in folder.iterdir()) == ["edgebench.db"]  # WAL closed cleanly
    before = _fingerprint(db)
    db.chmod(0o444)
    folder.chmod(0o555)
    try:
        assert _run_without_write_permission(db) == reference
    finally:
        folder.chmod(0o755)
        db.chmod(0o644)
    assert _fingerprint(db) == before
    assert sorted(p.name for p in folder.iterdir()) == ["edgebench.db"]


def test_a_database_a_collector_is_writing_still_reports(tmp_path, reference):
    folder = tmp_path / "live"
    folder.mkdir()
    path = folder / "edgebench.db"
    writer = open_db(path)  # stays open, like `collector serve`: WAL with its -shm and -wal
    try:
        insert_results(writer, RECORDS[:-3])
        refresh_index(writer.conn)
        first = CliRunner().invoke(report_group, ["latency", "-f", "json", "--db", str(path)])
        assert first.exit_code == 0, first.output
        assert sum(r["runs"] for r in json.loads(first.output)["rows"]) < sum(
            r.status == "ok" for r in RECORDS
        )
        insert_results(writer, RECORDS[-3:])  # committed, not indexed, not checkpointed
        assert {p.name for p in folder.iterdir()} >= {"edgebench.db-wal", "edgebench.db-shm"}
        path.chmod(0o444)
        folder.chmod(0o555)
        try:
            assert _run_without_write_permission(path, QUICK) == [reference[COMMANDS.index(c)] for c in QUICK]
        finally:
            folder.chmod(0o755)
            path.chmod(0o644)
        assert writer.conn.execute("SELECT COUNT(*) FROM report_runs").fetchone()[0] == len(RECORDS) - 3
    finally:
        writer.conn.close()
