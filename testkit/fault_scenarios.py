"""The end-to-end fault scenarios, each against real processes (testkit/fault_fleet.py), at a
given :class:`Scale`: tests/test_faults_e2e.py runs them CI-sized, bench/faults.py larger.

Each returns an :class:`~testkit.fault_fleet.Outcome` (produced / stored unique / lost / duplicated)
and raises AssertionError, with the processes' logs, when a step of the scenario itself does not happen
(a device never runs the job, a fault cannot be made). The callers assert on the outcome.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from testkit.fault_fleet import ROOT, Fleet, Outcome, make_artifacts, query, scalar, wait_for


@dataclass(frozen=True)
class Scale:
    devices: int = 2
    artifacts: int = 3
    min_time_s: float = 0.2  # timed runs per artifact (quick preset)
    stream_per_device: int = 2000  # collector kill -9: results per publisher (2 publishers)
    stream_resent: int = 200  # of which sent twice (an outbox replay)
    db_batch: int = 60  # db faults: results per phase
    settle_s: float = 180.0

    def device_ids(self, n: int | None = None) -> tuple[str, ...]:
        return tuple(f"dev-{chr(ord('a') + i)}" for i in range(n or self.devices))


CI = Scale()
BENCH = Scale(devices=3, artifacts=9, stream_per_device=10_000, stream_resent=500, db_batch=500, settle_s=600)


def _fleet(work: Path, scale: Scale, devices: int | None = None, **kw) -> Fleet:
    return Fleet(work, devices=scale.device_ids(devices), **kw)


def _start_all(fleet: Fleet) -> None:
    fleet.start_broker()
    fleet.start_collector()
    assert fleet.collector_workers() == (2 if (os.cpu_count() or 1) >= 2 else 1)  # the default
    fleet.start_agents()
    fleet.wait_online()


def _push(fleet: Fleet, artifacts: list[Path], scale: Scale, to: str = "all") -> str:
    return fleet.push(artifacts, to, min_time_s=scale.min_time_s, max_time_s=max(0.5, 2.5 * scale.min_time_s))


def _all_running(fleet: Fleet, job: str, devices=None) -> bool:
    return set(devices or fleet.devices) <= fleet.devices_in_state(job, "running")


def _finish(fleet: Fleet, job: str, scenario: str, scale: Scale, started: float, devices=None) -> Outcome:
    settled = fleet.wait_settled(job, scale.settle_s, devices)
    out = fleet.outcome(scenario, job, devices, seconds=time.monotonic() - started)
    if not settled:
        out.notes.append("NOT SETTLED: " + fleet.diagnose(job)[-6000:])
    devs = tuple(devices or fleet.devices)
    states = {d: fleet.job_state(d, job) for d in devs}
    if set(states.values()) != {"done"}:
        out.notes.append(f"job states {states}")
    expected = len(devs) * scale.artifacts
    if out.produced != expected:
        out.notes.append(f"expected {expected} produced")
    return out


# ---------------------------------------------------------------------- 1, 2: the broker


def broker_outage(work: Path, scale: Scale, outage_s: float, *, kill: bool = True, name: str = "") -> Outcome:
    """The broker dies (-9) while every device measures a pushed job and comes back ``outage_s`` later
    on the same port and persistence; the collector runs with its default settings (2 workers)."""
    name = name or f"broker kill -9, down {outage_s:g} s"
    with _fleet(work, scale) as fleet:
        artifacts = make_artifacts(work / "artifacts", scale.artifacts)
        _start_all(fleet)
        started = time.monotonic()
        job = _push(fleet, artifacts, scale)
        assert wait_for(lambda: _all_running(fleet, job), 120), fleet.diagnose(job)
        fleet.kill_broker() if kill else fleet.stop_broker()
        time.sleep(outage_s)
        fleet.start_broker()
        out = _finish(fleet, job, name, scale, started)
        out.notes.append(f"{fleet.agent_log_count('broker had no subscriber')} PUBACK 0x10 re-sent")
        return out


# ---------------------------------------------------------------------- 3: the collector


def collector_kill(work: Path, scale: Scale) -> Outcome:
    """kill -9 of `collector serve` (default: 2 workers) while two publishers stream results, some of
    them twice; restarted with the same sessions."""
    from testkit.mqtt_peer import publisher
    from testkit.records import make_record
    from wire import topics

    # Snapshot persistence once a second (see tests/test_ingest_kill.py: autosave on every change makes
    # mosquitto 2.0.11 rewrite its database per message queued for an offline session).
    with Fleet(work, devices=(), broker_extra=("autosave_on_changes false",)) as fleet:
        fleet.start_broker()
        fleet.start_collector()
        started = time.monotonic()
        produced: set[str] = set()
        pubs = []
        for d in scale.device_ids(2):
            lines = [make_record(d).to_json() for _ in range(scale.stream_per_device)]
            produced.update(json.loads(x)["result_id"] for x in lines)
            pubs.append(
                publisher(fleet.broker.port, topics.results(d), lines + lines[: scale.stream_resent], work)
            )
        total = len(produced)
        assert wait_for(lambda: scalar(fleet.db, "SELECT COUNT(*) FROM results") >= total // 5, 120)
        fleet.kill_collector()
        at_kill = scalar(fleet.db, "SELECT COUNT(*) FROM results")
        for p in pubs:
            assert p.wait(timeout=300) == 0, p.stderr.read() if p.stderr else ""
        fleet.start_collector(wait=False)
        wait_for(lambda: scalar(fleet.db, "SELECT COUNT(*) FROM results") >= total, scale.settle_s, 0.5)
        # settle: whatever is still queued arrives (and could only be a duplicate)
        wait_for(lambda: scalar(fleet.db, "SELECT SUM(queue_depth) FROM collector_health") == 0, 10)
        time.sleep(1.0)
        rows = [r[0] for r in query(fleet.db, "SELECT result_id FROM results")]
        ids = set(rows)
        out = Outcome(
            "collector kill -9 mid-stream",
            total,
            len(ids & produced),
            len(produced - ids),
            len(rows) - len(ids) + len(ids - produced),
            absorbed=fleet.absorbed(),
            seconds=time.monotonic() - started,
        )
        out.notes.append(f"{at_kill} stored at the kill, {total + 2 * scale.stream_resent} messages sent")
        dead = scalar(fleet.db, "SELECT COUNT(*) FROM dead_letters")
        if dead:
            out.notes.append(f"{dead} dead letters")
        return out


# ---------------------------------------------------------------------- 4: the agent


def agent_kill_mid_job(work: Path, scale: Scale) -> Outcome:
    """kill -9 of every agent after its first result is stored, restart: each resumes and measures only
    what was left; no result is lost or measured twice."""
    scale = replace(scale, min_time_s=max(scale.min_time_s, 0.6))  # long enough to be in the middle
    with _fleet(work, scale) as fleet:
        artifacts = make_artifacts(work / "artifacts", scale.artifacts)
        _start_all(fleet)
        started = time.monotonic()
        job = _push(fleet, artifacts, scale)
        killed = 0
        sql = "SELECT COUNT(*) FROM results WHERE job_id = ? AND device_id = ?"
        for d in fleet.devices:
            ok = wait_for(lambda d=d: scalar(fleet.db, sql, (job, d)) >= 1, 120)
            assert ok, fleet.diagnose(job)
            if fleet.job_state(d, job) not in ("done", "failed"):
                assert fleet.kill_agent(d) == -9
                killed += 1
        for d in fleet.devices:
            if not fleet.agents[d].alive():
                fleet.start_agent(d)
        out = _finish(fleet, job, "agent kill -9 mid-job", scale, started)
        out.notes.append(f"{killed} of {len(fleet.devices)} agents killed mid-job")
        return out


def agent_kill_mid_flush(work: Path, scale: Scale) -> Outcome:
    """The broker stops while the devices run a job; every result waits in the agents' outboxes; kill -9
    of the agents with those rows pending; the broker and the agents start again: each row delivered."""
    with _fleet(work, scale) as fleet:
        artifacts = make_artifacts(work / "artifacts", scale.artifacts)
        _start_all(fleet)
        started = time.monotonic()
        job = _push(fleet, artifacts, scale)
        assert wait_for(lambda: _all_running(fleet, job), 120), fleet.diagnose(job)
        fleet.stop_broker()
        assert wait_for(lambda: all(fleet.job_state(d, job) == "done" for d in fleet.devices), 180), (
            fleet.diagnose(job)
        )
        pending = {d: fleet.outbox_pending(d) for d in fleet.devices}
        for d in fleet.devices:
            assert fleet.kill_agent(d) == -9
        after = {d: fleet.outbox_pending(d) for d in fleet.devices}
        assert after == pending, (pending, after)  # kill -9 took nothing out of the outboxes
        fleet.start_broker()
        fleet.start_agents()
        out = _finish(fleet, job, "agent kill -9 with results pending", scale, started)
        out.notes.append(f"{sum(pending.values())} outbox rows pending at the kill")
        return out


# ---------------------------------------------------------------------- 5: the database


def _read_only(path: Path, on: bool) -> None:
    if os.geteuid() == 0:  # root ignores file modes: the immutable attribute
        subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True, capture_output=True)
    else:
        os.chmod(path, 0o444 if on else 0o644)


def can_make_read_only(path: Path) -> bool:
    path.write_bytes(b"")
    try:
        if os.geteuid() == 0 and shutil.which("chattr") is None:
            return False
        try:
            _read_only(path, True)
        except subprocess.CalledProcessError:
            return False
        ok = not os.access(path, os.W_OK)
        _read_only(path, False)
        return ok
    finally:
        path.unlink(missing_ok=True)


def _collector_status(fleet: Fleet) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "edgebench", "collector", "status", "--db", str(fleet.db)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    return done.stdout + done.stderr


def database_faults(work: Path, scale: Scale) -> Outcome:
    """`collector serve` (default, 2 workers) while results stream in: its database file deleted, then
    replaced by an older copy holding one result of its own, then made read-only (nothing stored,
    `collector status` says NOT WRITING) and writable again."""
    from collector.store.sqlite import insert_results, open_db
    from testkit.mqtt_peer import publisher
    from testkit.records import make_record
    from wire import topics

    with Fleet(work, devices=()) as fleet:
        fleet.start_broker()
        fleet.start_collector()
        started = time.monotonic()
        produced: list[str] = []
        device = "dev-db"

        def phase(label: str, expect_stored: bool = True) -> None:
            records = [make_record(device) for _ in range(scale.db_batch)]
            produced.extend(r.result_id for r in records)
            lines = [r.to_json() for r in records]
            pub = publisher(fleet.broker.port, topics.results(device), lines, work)
            assert pub.wait(timeout=120) == 0, pub.stderr.read() if pub.stderr else ""
            if expect_stored:
                ok = wait_for(lambda: scalar(fleet.db, "SELECT COUNT(*) FROM results") >= len(produced), 60)
                assert ok, f"{label}: " + fleet.collector.tail()  # type: ignore[union-attr]

        phase("before")
        fleet.db.unlink()  # `rm collector.db` (the -wal and -shm stay)
        phase("after delete")
        backup = work / "backup.db"  # an operator's copy, restored over the live file
        src, dst = sqlite3.connect(fleet.db), sqlite3.connect(backup)
        src.backup(dst)
        src.close()
        dst.close()
        extra = make_record("dev-other")  # a result only that copy has
        copy = open_db(backup)
        insert_results(copy, [extra])
        copy.close()
        phase("before replace")
        os.replace(backup, fleet.db)  # `mv backup.db collector.db`
        produced.append(extra.result_id)
        phase("after replace")
        before_ro = scalar(fleet.db, "SELECT COUNT(*) FROM results")
        _read_only(fleet.db, True)
        try:
            ok = wait_for(lambda: "NOT WRITING" in _collector_status(fleet), 30, 1.0)
            assert ok, _collector_status(fleet) + fleet.collector.tail()  # type: ignore[union-attr]
            phase("read-only", expect_stored=False)
            time.sleep(2.0)
            stored_while_ro = scalar(fleet.db, "SELECT COUNT(*) FROM results") - before_ro
        finally:
            _read_only(fleet.db, False)
        wait_for(lambda: scalar(fleet.db, "SELECT COUNT(*) FROM results") >= len(produced), 60, 0.5)
        time.sleep(1.0)
        rows = [r[0] for r in query(fleet.db, "SELECT result_id FROM results")]
        ids, want = set(rows), set(produced)
        out = Outcome(
            "database deleted, replaced, read-only",
            len(want),
            len(ids & want),
            len(want - ids),
            len(rows) - len(ids) + len(ids - want),
            absorbed=fleet.absorbed(),
            seconds=time.monotonic() - started,
        )
        out.notes.append(f"{stored_while_ro} stored while read-only")
        return out


# ---------------------------------------------------------------------- 6: the device's disk


def disk_too_small(work: Path, scale: Scale, disk_root: Path) -> Outcome:
    """An agent whose data directory is a small disk (``disk_root``, a tmpfs) gets a push that does not
    fit: the job fails naming the space, nothing half-written stays; the next push that fits runs and
    every result is stored once."""
    device = "dev-small"
    fleet = Fleet(work, devices=(device,), data_dirs={device: disk_root / "agent"})
    with fleet:
        artifacts = make_artifacts(work / "artifacts", scale.artifacts)
        from testkit.models import make_mlp_onnx

        big = make_mlp_onnx(work / "artifacts" / "too_big.onnx", hidden=80_000, seed=99)  # ~8 MB
        assert big.stat().st_size > shutil.disk_usage(disk_root).total  # bigger than the whole disk
        _start_all(fleet)
        started = time.monotonic()
        first = _push(fleet, [artifacts[0], big], scale, to=device)
        finished = wait_for(lambda: fleet.job_state(device, first) in ("done", "failed"), 120)
        assert finished, fleet.diagnose(first)
        assert wait_for(lambda: fleet.events(first, "failed"), 30), fleet.diagnose(first)
        failed = fleet.events(first, "failed")
        partials = list((disk_root / "agent" / "cache" / "partial").glob("*.part"))
        job = _push(fleet, artifacts, scale, to=device)
        out = _finish(fleet, job, "device disk too small for a push", scale, started, devices=(device,))
        reason = failed[0][2][:90] if failed else "?"
        out.notes.append(f"first push {fleet.job_state(device, first)}: {reason}")
        if partials:
            out.notes.append(f"partial files left: {partials}")
        out.notes.append(f"{fleet.outbox_pending(device)} pending")
        return out


SCENARIOS = {
    "broker-20s": lambda work, scale: broker_outage(work, scale, 20.0),
    "broker-60s": lambda work, scale: broker_outage(work, scale, 60.0),
    "collector-kill": collector_kill,
    "agent-kill-job": agent_kill_mid_job,
    "agent-kill-flush": agent_kill_mid_flush,
    "db-faults": database_faults,
}
