"""A full disk loses nothing: the agent's outbox and job files, the agent service, the collector's DB.

The disk is a real 4 MB tmpfs filled with a filler file until the kernel says ENOSPC (needs root; CI
runs as root), so SQLite and the job store meet the error a full SD card gives.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace

import pytest

from agent.delivery.outbox import OutboxFull, SqliteOutbox
from agent.jobs.store import JobStore
from agent.service.daemon import AgentService, run_measurement
from collector.config import BrokerSettings as CollectorBroker
from collector.config import CollectorConfig
from collector.ingest.ingestor import Ingestor
from testkit.fleet_peer import FleetPeer, wait_until
from testkit.mqtt_peer import Peer, db_count, wait_for
from testkit.records import make_record
from tests.test_agent_service import DEVICE, QUICK, make_config
from wire import topics
from wire.schema import DeviceInfo, new_id
from wire.signing import generate_keypair

PAYLOAD = b"r" * 8192  # bigger than any slack SQLite may keep in its WAL


@pytest.fixture
def keys(tmp_path):
    return generate_keypair(tmp_path / "keys", "collector")


def test_outbox_put_on_a_full_disk_raises_outbox_full_and_keeps_every_stored_row(small_disk):
    box = SqliteOutbox(small_disk.root / "outbox.db")
    stored = [box.put("edgebench/v1/devices/d/results", PAYLOAD + bytes([i])) for i in range(5)]
    small_disk.fill()
    assert small_disk.free_bytes() == 0
    with pytest.raises(OutboxFull, match="full"):
        for i in range(50):  # the WAL may hold a little slack; a full disk shows within a few puts
            box.put("edgebench/v1/devices/d/results", PAYLOAD + bytes([100 + i]))
    rows = box.pending()
    assert [r.id for r in rows][: len(stored)] == stored
    assert all(r.payload.startswith(PAYLOAD) for r in rows)
    small_disk.free()
    after = box.put("edgebench/v1/devices/d/results", b"after")
    assert box.pending()[-1].id == after and box.pending()[-1].payload == b"after"
    box.close()
    reopened = SqliteOutbox(small_disk.root / "outbox.db")  # what a restart sees
    assert [r.id for r in reopened.pending()][: len(stored)] == stored
    reopened.close()


def test_job_store_keeps_state_in_memory_when_the_disk_is_full(small_disk):
    store = JobStore(small_disk.root / "jobs")
    job_id = new_id()
    store.add(job_id, None, "received")
    small_disk.fill()
    entry = store.update(job_id, "running", "x" * 20000)  # does not raise
    assert entry.state == "running" and store.get(job_id).state == "running"
    assert store.unsaved == {job_id}
    assert not any(p.suffix == ".tmp" for p in store.dir.iterdir())  # no partial file left behind
    assert JobStore(store.dir).get(job_id).state == "received"  # disk is one step behind
    small_disk.free()
    assert store.save_unsaved() == 0
    assert JobStore(store.dir).get(job_id).state == "running"


@pytest.fixture
def agent_and_peer(small_disk, fresh_mosquitto, keys, tmp_path):
    """An agent whose data directory is on the small disk; its runner measures for real, then fills
    the disk, so the job's results meet a full disk. Yields (agent, peer, filled)."""
    filled = threading.Event()

    def runner(path, job, ref, device, cancel):
        records = run_measurement(path, job, ref, device, cancel)
        small_disk.fill()
        filled.set()
        return records

    config = replace(make_config(tmp_path, fresh_mosquitto, keys), data_dir=small_disk.root / "agent")
    agent = AgentService(config, device=DeviceInfo(device_id=DEVICE), runner=runner).start()
    peer = FleetPeer(fresh_mosquitto.host, fresh_mosquitto.port, client_id="collector-disk").start()
    try:
        assert agent.transport.wait_connected(10)
        yield agent, peer, filled
    finally:
        if not agent.stopping.is_set():
            agent.stop(flush_timeout_s=1.0)
        peer.stop()


def test_agent_holds_results_while_the_disk_is_full_then_delivers_each_once(
    agent_and_peer,
    small_disk,
    keys,
    tiny_mlp_onnx,
):
    agent, peer, filled = agent_and_peer
    ref = peer.add_artifact(tiny_mlp_onnx)
    job = peer.make_job([ref], f"device:{DEVICE}", replace(QUICK, threads=(1, 2)))
    peer.send_job(job, keys[0], DEVICE)
    assert filled.wait(60)
    assert wait_until(lambda: agent.keeper.disk_full, 10)
    assert any("held in memory" in e for e in agent.errors)
    assert peer.result_ids() == []  # nothing was stored, so nothing was sent
    assert agent.jobs.get(job.job_id).state == "running"  # the worker waits; no new job starts
    stored = agent.outbox.stats().pending
    # the heartbeat counts what waits in memory too, so the fleet sees the backlog grow
    assert wait_until(
        lambda: any(s.reason == "heartbeat" and (s.outbox_pending or 0) > stored for s in peer.statuses), 10
    )
    small_disk.free()
    assert wait_until(lambda: len(peer.result_ids()) == 2, 60)  # retried within its backoff
    assert wait_until(lambda: peer.event(job.job_id, "done") is not None, 30)
    assert not agent.keeper.disk_full and agent.keeper.unstored == 0
    assert agent.transport.flush(10)
    assert sorted(set(peer.result_ids())) == sorted(peer.result_ids())  # each exactly once


def test_agent_stopping_with_a_full_disk_publishes_held_results_directly(
    agent_and_peer,
    keys,
    tiny_mlp_onnx,
):
    agent, peer, filled = agent_and_peer
    ref = peer.add_artifact(tiny_mlp_onnx)
    job = peer.make_job([ref], f"device:{DEVICE}", QUICK)
    peer.send_job(job, keys[0], DEVICE)
    assert filled.wait(60) and wait_until(lambda: agent.keeper.disk_full, 10)
    agent.stop(flush_timeout_s=2.0)  # SIGTERM's path: the disk is still full
    assert wait_until(lambda: len(peer.result_ids()) == 1, 10)
    assert agent.keeper.unstored == 0


def test_collector_on_a_full_disk_acks_nothing_and_stores_everything_once_there_is_room(
    small_disk,
    fresh_mosquitto,
):
    db = small_disk.root / "edgebench.db"
    config = CollectorConfig(
        db=str(db),
        client_id=f"collector-full-{new_id()[:8]}",
        broker=CollectorBroker(host=fresh_mosquitto.host, port=fresh_mosquitto.port),
    )
    ingestor = Ingestor(config).start()
    peer = Peer(fresh_mosquitto.port, "device-full")
    try:
        assert ingestor.wait_connected(10)
        assert wait_for(lambda: ingestor.client.is_connected(), 5)
        first = make_record("dev-1")
        peer.publish(topics.results("dev-1"), first.to_json())
        assert wait_for(lambda: db_count(db) == 1, 15)
        small_disk.fill()
        sent = [make_record("dev-1") for _ in range(40)]
        for record in sent:
            peer.publish(topics.results("dev-1"), record.to_json())
        assert wait_for(lambda: ingestor.stats.received >= 41, 15)
        assert not wait_for(lambda: ingestor.stats.committed > 1, 2)  # the writer retries, never acks
        assert db_count(db, "SELECT COUNT(*) FROM dead_letters") == 0
        small_disk.free()
        assert wait_for(lambda: db_count(db) == 41, 60)
        ids = {r.result_id for r in sent} | {first.result_id}
        stored = db_count(db, "SELECT COUNT(DISTINCT result_id) FROM results")
        assert stored == len(ids) == 41
        assert db_count(db, "SELECT COUNT(*) FROM dead_letters") == 0
    finally:
        peer.close()
        ingestor.stop()
    assert os.path.exists(db)


def test_artifact_that_does_not_fit_fails_its_job_with_the_reason(agent_and_peer, small_disk, keys, tmp_path):
    agent, peer, _ = agent_and_peer
    big = tmp_path / "big.onnx"  # not a real model: the job fails before anything runs
    big.write_bytes(os.urandom(1024 * 1024))
    small_disk.fill(leave_bytes=256 * 1024)  # room for events and job files, not for the artifact
    ref = peer.add_artifact(big)
    job = peer.make_job([ref], f"device:{DEVICE}", QUICK)
    peer.send_job(job, keys[0], DEVICE)
    assert wait_until(lambda: peer.event(job.job_id, "failed") is not None, 30)
    assert "no space left on the device for 1048576 bytes" in peer.event(job.job_id, "failed").detail
    assert peer.states(job.job_id)[:2] == ["received", "fetching"]
    assert not list((small_disk.root / "agent" / "cache" / "partial").glob("*.part"))  # nothing half-made
    assert not agent.keeper.disk_full


def test_agent_status_answers_on_a_full_disk_and_says_so(agent_and_peer, small_disk, tmp_path):
    from click.testing import CliRunner

    from agent.service.cli import agent_group
    from agent.service.status import agent_status

    agent, _, _ = agent_and_peer
    agent.transport.stop()  # broker link gone: the row below stays pending
    agent.outbox.put(topics.results(DEVICE), make_record(DEVICE).to_json().encode())
    small_disk.fill()
    info = agent_status(agent.config)
    assert info["outbox"]["pending"] >= 1 and "error" not in info["outbox"]
    assert info["disk"]["free_bytes"] == 0
    args = ["--data-dir", str(agent.config.data_dir), "--device-id", DEVICE]
    out = CliRunner().invoke(agent_group, ["status", *args])
    assert out.exit_code == 0, out.output
    assert "FULL: new results are held in memory" in out.output
