"""The collector watches its database (collector/store/watch.py): a real mosquitto, real SQLite files, and
the file deleted, replaced, made read-only (while running and before the start), or the disk full.

Each scenario publishes N results before and N after the fault, repairs the fault where it has a
repair, and checks that every produced result is stored exactly once in the file at the configured
path; it prints `scenario: produced P / stored unique S / lost L / duplicated D`.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.config import BrokerSettings, CollectorConfig
from collector.ingest.health import collector_health, format_health
from collector.ingest.ingestor import Ingestor
from collector.service.cli import collector_group
from collector.store.sqlite import insert_results, open_db
from collector.store.watch import state_dir
from testkit.mqtt_peer import Peer, db_count, publisher, wait_for
from testkit.records import make_record
from wire import topics
from wire.schema import new_id

N = 60
ROOT = Path(__file__).resolve().parents[1]


def _config(broker, db: Path) -> CollectorConfig:
    return CollectorConfig(
        db=str(db),
        client_id=f"dbfault-{new_id()[:8]}",
        broker=BrokerSettings(host=broker.host, port=broker.port),
    )


def _start(broker, db: Path, **kw) -> Ingestor:
    ing = Ingestor(_config(broker, db), **kw).start()
    assert ing.wait_connected(10)
    assert wait_for(lambda: ing.stats.subscribed, 10)
    return ing


def _publish(peer: Peer, device: str, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        record = make_record(device)
        peer.publish(topics.results(device), record.to_json())
        ids.append(record.result_id)
    return ids


def _outcome(scenario: str, db: Path, produced: list[str]) -> tuple[int, int, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = [r[0] for r in conn.execute("SELECT result_id FROM results")]
    finally:
        conn.close()
    want = set(produced)
    stored = set(rows) & want
    lost, duplicated = len(want - stored), len(rows) - len(set(rows))
    print(
        f"\n{scenario}: produced {len(want)} / stored unique {len(stored)} / lost {lost} / "
        f"duplicated {duplicated}"
    )
    return len(stored), lost, duplicated


@pytest.fixture
def peer(mosquitto):
    p = Peer(mosquitto.port, f"dev-{new_id()[:8]}")
    yield p
    p.close()


# ------------------------------------------------------------------ read-only, portable and as root


def _can_make_read_only(path: Path) -> tuple[str, str] | None:
    """Root ignores file modes: use the immutable attribute there (chattr), chmod otherwise."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            return None
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
        if done.returncode != 0:
            return None
        ok = not os.access(path, os.W_OK)
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        return ("chattr", "+i") if ok else None
    os.chmod(path, 0o444)
    ok = not os.access(path, os.W_OK)
    os.chmod(path, 0o644)
    return ("chmod", "0444") if ok else None


def _read_only(path: Path, on: bool) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True, capture_output=True)
    else:
        os.chmod(path, 0o444 if on else 0o644)


@pytest.fixture
def ro_db(db_path):
    open_db(db_path).close()
    if _can_make_read_only(db_path) is None:
        pytest.skip("cannot make a file read-only here (root without chattr / an fs without +i)")
    yield db_path
    _read_only(db_path, False)


# ------------------------------------------------------------------ deleted, replaced


def test_database_deleted_while_running_is_restored_from_the_open_connection(mosquitto, peer, db_path):
    ing = _start(mosquitto, db_path)
    try:
        before = _publish(peer, "dev-del", N)
        assert wait_for(lambda: db_count(db_path) == N, 30)
        db_path.unlink()  # `rm edgebench.db`: -wal and -shm stay
        after = _publish(peer, "dev-del", N)
        assert wait_for(lambda: db_count(db_path) == 2 * N, 30), ing.watch.state
        assert ing.watch.state == "ok"
    finally:
        ing.stop()
    stored, lost, duplicated = _outcome("deleted", db_path, before + after)
    assert (stored, lost, duplicated) == (2 * N, 0, 0)
    assert list(state_dir(db_path).glob("salvage-*.db")) == []  # installed, not left behind
    # A restart finds the restored file (nothing is created silently).
    ing = _start(mosquitto, db_path)
    ing.stop()
    assert db_count(db_path) == 2 * N


def test_database_deleted_with_its_wal_while_idle_is_restored_without_traffic(mosquitto, peer, db_path):
    ing = _start(mosquitto, db_path)
    try:
        before = _publish(peer, "dev-rmall", N)
        assert wait_for(lambda: db_count(db_path) == N, 30)
        for suffix in ("", "-wal", "-shm"):  # `rm edgebench.db*`
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)
        assert wait_for(lambda: db_count(db_path) == N, 30)  # the idle tick noticed and restored it
        after = _publish(peer, "dev-rmall", N)
        assert wait_for(lambda: db_count(db_path) == 2 * N, 30)
    finally:
        ing.stop()
    stored, lost, duplicated = _outcome("deleted with -wal/-shm", db_path, before + after)
    assert (stored, lost, duplicated) == (2 * N, 0, 0)


def test_database_replaced_while_running_is_merged_into_the_new_file(mosquitto, peer, db_path, tmp_path):
    ing = _start(mosquitto, db_path)
    try:
        first = _publish(peer, "dev-rep", N // 2)
        assert wait_for(lambda: db_count(db_path) == N // 2, 30)
        backup = tmp_path / "backup.db"  # an operator's earlier copy, restored over the live file
        src, dst = sqlite3.connect(db_path), sqlite3.connect(backup)
        src.backup(dst)
        src.close()
        dst.close()
        extra = make_record("dev-other")  # something only the copy has
        with_extra = open_db(backup)
        insert_results(with_extra, [extra])
        with_extra.close()
        second = _publish(peer, "dev-rep", N - N // 2)
        assert wait_for(lambda: db_count(db_path) == N, 30)
        os.replace(backup, db_path)  # `mv backup.db edgebench.db`
        after = _publish(peer, "dev-rep", N)
        assert wait_for(lambda: db_count(db_path) == 2 * N + 1, 30), ing.watch.state
        assert os.stat(db_path).st_ino == ing.watch._identity[1]  # writing to the new file
    finally:
        ing.stop()
    produced = first + second + after + [extra.result_id]
    stored, lost, duplicated = _outcome("replaced", db_path, produced)
    assert (stored, lost, duplicated) == (2 * N + 1, 0, 0)


def test_database_deleted_under_two_worker_processes(mosquitto, db_path, tmp_path):
    """`collector serve --workers 2` (the default on 2 cores): both workers hold the deleted inode; the
    last one to let go restores it, the other switches to the restored file."""
    log = tmp_path / "collector.log"
    client_id = f"dbfault-w2-{new_id()[:6]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgebench", "collector", "serve", "--db", str(db_path), "--broker",
             f"127.0.0.1:{mosquitto.port}", "--client-id", client_id, "--workers", "2", "-v"],
            stdout=fh, stderr=fh, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        assert wait_for(
            lambda: db_count(db_path, "SELECT COUNT(*) FROM collector_health WHERE connected = 1") >= 2, 30
        ), log.read_text()
        before = [make_record("dev-w2") for _ in range(N * 4)]
        pub = publisher(mosquitto.port, topics.results("dev-w2"), [r.to_json() for r in before], tmp_path)
        assert pub.wait(timeout=60) == 0
        assert wait_for(lambda: db_count(db_path) == len(before), 30), log.read_text()[-2000:]
        db_path.unlink()
        after = [make_record("dev-w2") for _ in range(N * 4)]
        pub = publisher(mosquitto.port, topics.results("dev-w2"), [r.to_json() for r in after], tmp_path)
        assert pub.wait(timeout=60) == 0
        assert wait_for(lambda: db_count(db_path) == len(before) + len(after), 60), log.read_text()[-3000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    ids = [r.result_id for r in before + after]
    stored, lost, duplicated = _outcome("deleted, 2 workers", db_path, ids)
    assert (stored, lost, duplicated) == (len(ids), 0, 0)
    assert "restored from the open connection" in log.read_text()


# ------------------------------------------------------------------ read-only


def _not_writing_line(db: Path) -> str:
    health = collector_health(db)
    assert health.not_writing and not health.running
    text = format_health(health)
    assert "NOT WRITING" in text and "running, lag" not in text
    return next(line for line in text.splitlines() if "NOT WRITING" in line)


def test_database_read_only_while_running_acks_nothing_and_recovers(mosquitto, peer, ro_db):
    ing = _start(mosquitto, ro_db)
    try:
        before = _publish(peer, "dev-ro", N)
        assert wait_for(lambda: db_count(ro_db) == N, 30)
        _read_only(ro_db, True)
        assert wait_for(lambda: ing.watch.state == "read-only", 10)  # the idle tick notices
        line = _not_writing_line(ro_db)
        assert "read-only" in line and f"pid {os.getpid()}" in line and "nothing is acknowledged" in line
        status = CliRunner().invoke(collector_group, ["status", "--db", str(ro_db)])
        assert status.exit_code == 1 and "NOT WRITING" in status.output, status.output
        committed = ing.stats.committed
        after = _publish(peer, "dev-ro", N)  # the broker takes them; the collector must not ack
        assert wait_for(lambda: ing.stats.received >= committed + N, 30)
        assert ing.stats.committed == committed and db_count(ro_db) == N
        _read_only(ro_db, False)
        assert wait_for(lambda: db_count(ro_db) == 2 * N, 60), ing.watch.state
        assert wait_for(lambda: collector_health(ro_db).running, 15)
    finally:
        _read_only(ro_db, False)
        ing.stop()
    stored, lost, duplicated = _outcome("read-only while running", ro_db, before + after)
    assert (stored, lost, duplicated) == (2 * N, 0, 0)


def test_collector_started_on_a_read_only_database_recovers_when_it_is_writable(mosquitto, peer, ro_db):
    _read_only(ro_db, True)
    ing = _start(mosquitto, ro_db)  # no error: it waits for the file and says so
    try:
        assert ing.watch.state == "read-only" and ing.db is None
        assert "read-only" in _not_writing_line(ro_db)
        produced = _publish(peer, "dev-ro-start", N)
        assert wait_for(lambda: ing.stats.received >= N, 30)
        assert ing.stats.committed == 0 and db_count(ro_db) == 0
        _read_only(ro_db, False)
        produced += _publish(peer, "dev-ro-start", N)
        assert wait_for(lambda: db_count(ro_db) == 2 * N, 60), ing.watch.state
        assert not collector_health(ro_db).not_writing
    finally:
        _read_only(ro_db, False)
        ing.stop()
    stored, lost, duplicated = _outcome("started read-only", ro_db, produced)
    assert (stored, lost, duplicated) == (2 * N, 0, 0)


def test_disk_full_says_not_writing_and_recovers(small_disk, fresh_mosquitto):
    db = small_disk.root / "edgebench.db"
    ing = _start(fresh_mosquitto, db)
    peer = Peer(fresh_mosquitto.port, "dev-full")
    try:
        before = _publish(peer, "dev-full", N)
        assert wait_for(lambda: db_count(db) == N, 30)
        small_disk.fill()
        after = _publish(peer, "dev-full", N)
        # (A commit may still fit in the WAL's old frames now and then: the state is what the last
        # write found, so poll the status until it says so.)
        assert wait_for(lambda: "NOT WRITING: the disk is full" in format_health(collector_health(db)), 30)
        small_disk.free()
        assert wait_for(lambda: db_count(db) == 2 * N, 60), ing.watch.state
    finally:
        peer.close()
        small_disk.free()
        ing.stop()
    stored, lost, duplicated = _outcome("disk full", db, before + after)
    assert (stored, lost, duplicated) == (2 * N, 0, 0)


# ------------------------------------------------------------------ missing at start


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_missing_database_where_one_was_is_a_one_line_error(mosquitto, db_path, workers):
    ing = _start(mosquitto, db_path)
    ing.stop()
    db_path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    out = CliRunner().invoke(
        collector_group,
        ["serve", "--db", str(db_path), "--broker", f"127.0.0.1:{mosquitto.port}", "--workers", workers],
    )
    errors = [line for line in out.output.splitlines() if line.startswith("Error:")]
    assert out.exit_code == 1 and len(errors) == 1 and "Traceback" not in out.output, out.output
    assert "no database at" in errors[0] and "--create-db" in errors[0]
    assert not db_path.exists()  # nothing created silently
    ing = _start(mosquitto, db_path, create_db=True)  # asked for: an empty one
    ing.stop()
    assert db_path.exists() and db_count(db_path) == 0
