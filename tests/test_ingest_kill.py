"""kill -9 of a real `python -m edgebench collector serve` mid-stream, restart with the same session:
every unique result id is stored exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgebench.broker import MosquittoBroker
from testkit.mqtt_peer import db_count, publisher, wait_for
from testkit.records import make_record
from wire import topics

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def broker(tmp_path):
    """The collector is killed here, not the broker: snapshot persistence once a second. (With
    `autosave_on_changes true` and `autosave_interval 1`, mosquitto 2.0.11 rewrites its whole
    database for every message queued to an offline session: publishing slows from ~0.5 s to ~30 s
    for 4,400 messages.)"""
    b = MosquittoBroker(workdir=tmp_path / "mosquitto", extra_config=["autosave_on_changes false"]).start()
    yield b
    b.stop()


def _start_collector(port: int, db_path: Path, client_id: str, workers: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "edgebench", "collector", "serve", "--db", str(db_path),
             "--broker", f"127.0.0.1:{port}", "--client-id", client_id, "--workers", str(workers)],
            stdout=fh, stderr=fh, env=env, start_new_session=True,
        )  # fmt: skip


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _health_connected(db_path: Path, workers: int) -> bool:
    return db_count(db_path, "SELECT COUNT(*) FROM collector_health WHERE connected = 1") >= workers


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_kill9_mid_stream_then_restart_loses_and_doubles_nothing(broker, tmp_path, workers):
    db_path = tmp_path / "kill.db"
    log = tmp_path / "collector.log"
    client_id = f"kill-test-{workers}"
    n_per_device, devices, resent = 4000, 2, 400
    proc = _start_collector(broker.port, db_path, client_id, workers, log)
    try:
        assert wait_for(lambda: _health_connected(db_path, workers), 30), log.read_text()
        sent: dict[str, list[str]] = {}
        for d in range(devices):
            device = f"dev-{d}"
            records = [make_record(device).to_json() for _ in range(n_per_device)]
            lines = records + records[:resent]  # a device re-sending (outbox replay): duplicates on the wire
            sent[device] = lines
        t0 = time.monotonic()
        pubs = [publisher(broker.port, topics.results(d), lines, tmp_path) for d, lines in sent.items()]
        unique = devices * n_per_device
        assert wait_for(lambda: db_count(db_path) >= unique // 5, 60), log.read_text()
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream; workers die with the parent (PDEATHSIG)
        proc.wait(timeout=10)
        at_kill = db_count(db_path)
        t_kill = time.monotonic() - t0
        for p in pubs:
            assert p.wait(timeout=120) == 0, p.stderr.read() if p.stderr else ""
        t_pub = time.monotonic() - t0
        assert at_kill < unique, "the stream was over before the kill; raise n_per_device"
        proc = _start_collector(broker.port, db_path, client_id, workers, log)
        assert wait_for(lambda: db_count(db_path) >= unique, 120), (
            db_count(db_path),
            log.read_text()[-2000:],
        )
        t_done = time.monotonic() - t0
        # Settle: nothing more arrives (no duplicates can appear later either, the PK forbids them).
        wait_for(lambda: db_count(db_path, "SELECT SUM(queue_depth) FROM collector_health") == 0, 10)
        rows = db_count(db_path)
        distinct = db_count(db_path, "SELECT COUNT(DISTINCT result_id) FROM results")
        total = sum(len(v) for v in sent.values())
        absorbed = db_count(db_path, "SELECT SUM(results_duplicate) FROM collector_health")
        print(f"\nworkers={workers}: sent {total} messages, {unique} unique ids; "
              f"{at_kill} rows at kill -9; {rows} rows after restart, {absorbed} duplicates absorbed "
              f"(kill at {t_kill:.1f} s, publishers done {t_pub:.1f} s, "
              f"all stored {t_done:.1f} s)")  # fmt: skip
        assert rows == distinct == unique
        assert db_count(db_path, "SELECT COUNT(*) FROM dead_letters") == 0
    finally:
        _stop(proc)
