"""The agent service in-process against a real mosquitto and a real paho "collector side" (FleetPeer).

Real jobs, real signatures, real chunked delivery, real onnxruntime measurements (tiny presets).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from agent.service.config import AgentConfig, BrokerSettings, HeartbeatSettings, JobsSettings
from agent.service.daemon import AgentService
from testkit.fleet_peer import FleetPeer, wait_until
from wire.schema import BenchSettings, CancelJob, DeviceInfo, new_id, utc_now
from wire.signing import generate_keypair

DEVICE = "pi-test"
QUICK = BenchSettings(preset="quick", min_runs=5, min_time_s=0.05, max_time_s=1.0)
LONG = BenchSettings(preset="quick", min_runs=100000, min_time_s=60.0, max_time_s=120.0)


@pytest.fixture
def keys(tmp_path):
    return generate_keypair(tmp_path / "keys", "collector")


def make_config(tmp_path: Path, broker, keys, **jobs) -> AgentConfig:
    return AgentConfig(
        device_id=DEVICE,
        tags=("lab",),
        data_dir=tmp_path / "agent-data",
        broker=BrokerSettings(host=broker.host, port=broker.port, reconnect_min_s=0.2, reconnect_max_s=1.0),
        jobs=replace(
            JobsSettings(trusted_keys=(str(keys[1]),), chunk_size=1024, chunk_timeout_s=0.5), **jobs
        ),
        heartbeat=HeartbeatSettings(interval_s=0.5),
    ).validate()


@pytest.fixture
def agent_factory(tmp_path, keys):
    started: list[AgentService] = []

    def start(broker, **jobs) -> AgentService:
        service = AgentService(
            make_config(tmp_path, broker, keys, **jobs), device=DeviceInfo(device_id=DEVICE)
        )
        started.append(service.start())
        if broker.running:
            assert service.transport.wait_connected(10)  # subscribed: jobs sent now reach it
        return service

    yield start
    for service in started:
        if not service.stopping.is_set():
            service.stop(flush_timeout_s=1.0)


@pytest.fixture
def peer(fresh_mosquitto):
    with FleetPeer(fresh_mosquitto.host, fresh_mosquitto.port) as p:
        yield p


def test_signed_job_runs_end_to_end(fresh_mosquitto, peer, agent_factory, keys, tiny_mlp_onnx):
    agent = agent_factory(fresh_mosquitto)
    assert agent.transport.wait_connected(10)
    ref = peer.add_artifact(tiny_mlp_onnx)
    job = peer.make_job([ref], f"device:{DEVICE}", replace(QUICK, threads=(1, 2)))
    peer.send_job(job, keys[0], DEVICE)
    assert wait_until(lambda: peer.event(job.job_id, "done") or peer.event(job.job_id, "failed"), 90)
    assert peer.states(job.job_id) == ["received", "fetching", "verifying", "running", "done"]
    done = peer.event(job.job_id, "done")
    assert wait_until(lambda: len(peer.results) == 2, 10)
    assert set(done.result_ids) == set(peer.result_ids())
    assert all(
        r.status == "ok" and r.job_id == job.job_id and r.artifact.sha256 == ref.sha256 for r in peer.results
    )
    assert sorted(r.config.threads for r in peer.results) == [1, 2]
    assert agent.fetcher.cached(ref) is not None  # content-addressed cache
    assert wait_until(lambda: agent.outbox.stats().pending == 0, 10)
    # birth (with facts) and heartbeats were published
    assert wait_until(lambda: any(s.reason == "heartbeat" for s in peer.statuses), 5)
    birth = next(s for s in peer.statuses if s.reason == "birth")
    assert birth.state == "online" and birth.facts is not None and birth.facts.device_id == DEVICE
    # a second job for the same artifact is served from the cache: no new chunk request
    requests = len(peer.chunk_requests)
    job2 = peer.make_job([ref], "tag:lab", QUICK)
    peer.send_job(job2, keys[0], DEVICE, target="tag:lab")
    assert wait_until(lambda: peer.event(job2.job_id, "done"), 60)
    assert len(peer.chunk_requests) == requests
    assert agent.jobs.get(job.job_id).state == "done"


@pytest.mark.parametrize("how", ["unsigned", "unknown-key", "tampered", "wrong-target"])
def test_untrusted_jobs_are_rejected_and_never_run(fresh_mosquitto, peer, agent_factory, keys, tmp_path, how,
                                                   tiny_mlp_onnx):  # fmt: skip
    agent = agent_factory(fresh_mosquitto)
    assert agent.transport.wait_connected(10)
    ref = peer.add_artifact(tiny_mlp_onnx)
    job = peer.make_job([ref], f"device:{DEVICE}", QUICK)
    key = keys[0]
    if how == "unsigned":
        key = None
    elif how == "unknown-key":
        key = generate_keypair(tmp_path / "intruder", "intruder")[0]
    elif how == "wrong-target":
        job = replace(job, target="device:someone-else")
    if how == "tampered":
        from wire.signing import sign_job

        signed = sign_job(job, keys[0])
        tampered = replace(signed, settings=replace(QUICK, min_runs=7))
        peer.send_job(tampered, None, DEVICE)
    else:
        peer.send_job(job, key, DEVICE)
    assert wait_until(lambda: peer.event(job.job_id, "rejected"), 15)
    reason = peer.event(job.job_id, "rejected").detail
    expected = {
        "unsigned": "unsigned",
        "unknown-key": "unknown key",
        "tampered": "bad signature",
        "wrong-target": "not this device",
    }
    assert expected[how] in reason
    assert peer.states(job.job_id) == ["rejected"]
    assert peer.chunk_requests == [] and peer.results == []
    assert agent.jobs.get(job.job_id).state == "rejected"


def test_lost_chunks_are_requested_again(fresh_mosquitto, peer, agent_factory, keys, tiny_mlp_onnx):
    agent = agent_factory(fresh_mosquitto)
    assert agent.transport.wait_connected(10)
    ref = peer.add_artifact(tiny_mlp_onnx)
    total = -(-ref.size_bytes // 1024)
    assert total >= 2
    peer.drop_once[ref.sha256] = {0, total - 1}
    job = peer.make_job([ref], f"device:{DEVICE}", QUICK)
    peer.send_job(job, keys[0], DEVICE)
    assert wait_until(lambda: peer.event(job.job_id, "done") or peer.event(job.job_id, "failed"), 60)
    assert peer.event(job.job_id, "done") is not None, peer.states(job.job_id)
    indices = [r.indices for r in peer.chunk_requests]
    assert indices[0] == () and (0, total - 1) in indices[1:]
    assert len(peer.results) == 1 and peer.results[0].status == "ok"


def test_wrong_sha256_fails_the_job(fresh_mosquitto, peer, agent_factory, keys, tiny_mlp_onnx):
    agent_factory(fresh_mosquitto)
    ref = peer.add_artifact(tiny_mlp_onnx, claimed_sha="ab" * 32)  # served bytes do not hash to this
    job = peer.make_job([ref], f"device:{DEVICE}", QUICK)
    peer.send_job(job, keys[0], DEVICE)
    assert wait_until(lambda: peer.event(job.job_id, "failed"), 30)
    assert "sha256 mismatch" in peer.event(job.job_id, "failed").detail
    assert peer.results == [] and "running" not in peer.states(job.job_id)


def test_missing_artifact_fails_after_retries(fresh_mosquitto, peer, agent_factory, keys, tiny_mlp_onnx):
    agent_factory(fresh_mosquitto, chunk_timeout_s=0.2, chunk_retries=1)
    ref = peer.add_artifact(tiny_mlp_onnx)
    peer.artifacts.clear()  # the collector no longer has it
    job = peer.make_job([ref], f"device:{DEVICE}", QUICK)
    peer.send_job(job, keys[0], DEVICE)
    assert wait_until(lambda: peer.event(job.job_id, "failed"), 30)
    assert "chunks missing" in peer.event(job.job_id, "failed").detail


def test_broker_down_at_start_then_job_runs(fresh_mosquitto, keys, agent_factory, tiny_mlp_onnx):
    fresh_mosquitto.stop()
    agent = agent_factory(fresh_mosquitto)
    assert not agent.transport.wait_connected(1.0)
    fresh_mosquitto.start()
    with FleetPeer(fresh_mosquitto.host, fresh_mosquitto.port) as peer:
        assert agent.transport.wait_connected(15)
        ref = peer.add_artifact(tiny_mlp_onnx)
        job = peer.make_job([ref], f"device:{DEVICE}", QUICK)
        peer.send_job(job, keys[0], DEVICE)
        assert wait_until(lambda: peer.event(job.job_id, "done"), 60)
        assert len(set(peer.result_ids())) == 1


def test_broker_restarted_mid_job_every_result_arrives_once(
    fresh_mosquitto, keys, agent_factory, tiny_mlp_onnx
):
    agent = agent_factory(fresh_mosquitto)
    peer = FleetPeer(fresh_mosquitto.host, fresh_mosquitto.port, client_id="collector-restart").start()
    try:
        assert agent.transport.wait_connected(10)
        ref = peer.add_artifact(tiny_mlp_onnx)
        settings = replace(QUICK, threads=(1, 2, 1, 2), min_time_s=0.5)
        job = peer.make_job([ref], f"device:{DEVICE}", settings)
        peer.send_job(job, keys[0], DEVICE)
        assert wait_until(lambda: peer.event(job.job_id, "running"), 30)
        fresh_mosquitto.stop()
        assert wait_until(lambda: agent.jobs.get(job.job_id).state == "done", 90)
        produced = agent.jobs.get(job.job_id).result_ids
        fresh_mosquitto.start()
        assert wait_until(lambda: len(set(peer.result_ids())) >= len(produced), 30)
        assert wait_until(lambda: peer.event(job.job_id, "done"), 10)
        assert set(peer.result_ids()) == set(produced) and len(produced) == 4
        assert agent.transport.flush(10)
    finally:
        peer.stop()


def test_cancel_aborts_the_running_measurement(fresh_mosquitto, peer, agent_factory, keys, tiny_mlp_onnx):
    agent_factory(fresh_mosquitto)
    ref = peer.add_artifact(tiny_mlp_onnx)
    job = peer.make_job([ref], f"device:{DEVICE}", LONG)
    peer.send_job(job, keys[0], DEVICE)
    assert wait_until(lambda: peer.event(job.job_id, "running"), 30)
    peer.send_job(CancelJob(job_id=job.job_id, created_at=utc_now()), keys[0], DEVICE)
    assert wait_until(lambda: peer.event(job.job_id, "cancelled"), 40)
    assert wait_until(lambda: len(peer.results) == 1, 10)
    assert peer.results[0].status == "aborted"


def test_cancel_of_a_queued_job_and_unsigned_cancel_ignored(fresh_mosquitto, peer, agent_factory, keys,
                                                            tiny_mlp_onnx):  # fmt: skip
    agent = agent_factory(fresh_mosquitto)
    ref = peer.add_artifact(tiny_mlp_onnx)
    first = peer.make_job([ref], f"device:{DEVICE}", LONG)
    second = peer.make_job([ref], f"device:{DEVICE}", QUICK)
    peer.send_job(first, keys[0], DEVICE)
    assert wait_until(lambda: peer.event(first.job_id, "running"), 30)
    peer.send_job(second, keys[0], DEVICE)  # one job at a time: this one waits
    assert wait_until(lambda: peer.event(second.job_id, "received"), 10)
    peer.send_job(CancelJob(job_id=first.job_id, created_at=utc_now()), None, DEVICE)  # unsigned: ignored
    peer.send_job(CancelJob(job_id=second.job_id, created_at=utc_now()), keys[0], DEVICE)
    assert wait_until(lambda: peer.event(second.job_id, "cancelled"), 10)
    assert agent.current_job == first.job_id
    assert any("unsigned" in e for e in agent.errors)
    peer.send_job(CancelJob(job_id=first.job_id, created_at=utc_now()), keys[0], DEVICE)
    assert wait_until(lambda: peer.event(first.job_id, "cancelled"), 40)
    assert "running" not in peer.states(second.job_id)


def test_jobs_persist_and_queued_job_runs_after_restart(fresh_mosquitto, peer, agent_factory, keys,
                                                        tiny_mlp_onnx):  # fmt: skip
    agent = agent_factory(fresh_mosquitto)
    ref = peer.add_artifact(tiny_mlp_onnx)
    first = peer.make_job([ref], f"device:{DEVICE}", LONG)
    second = peer.make_job([ref], f"device:{DEVICE}", QUICK)
    peer.send_job(first, keys[0], DEVICE)
    assert wait_until(lambda: peer.event(first.job_id, "running"), 30)
    peer.send_job(second, keys[0], DEVICE)
    assert wait_until(lambda: peer.event(second.job_id, "received"), 10)
    agent.stop(flush_timeout_s=5)  # SIGTERM path: abort the running job, keep the queued one
    assert wait_until(lambda: peer.event(first.job_id, "aborted"), 10)
    assert [r.status for r in peer.results] == ["aborted"]
    again = agent_factory(fresh_mosquitto)
    assert wait_until(lambda: peer.event(second.job_id, "done"), 60)
    assert again.jobs.get(first.job_id).state == "aborted"
    assert [r.status for r in peer.results] == ["aborted", "ok"]


def test_malformed_job_message_reported(fresh_mosquitto, peer, agent_factory):
    agent = agent_factory(fresh_mosquitto)
    assert agent.transport.wait_connected(10)
    job_id = new_id()
    from wire import topics

    peer.client.publish(topics.device_jobs(DEVICE), f'{{"kind":"job","job_id":"{job_id}"}}', qos=1)
    assert wait_until(lambda: peer.event(job_id, "rejected"), 10)
    assert "malformed" in peer.event(job_id, "rejected").detail


def test_max_threads_caps_what_a_job_asks(tiny_mlp_onnx):
    """A device's [jobs] max_threads caps a sweep and replaces the runtime default."""
    import threading as _threading

    from agent.probes.facts import device_info
    from agent.service.daemon import run_measurement
    from wire.artifacts import file_sha256
    from wire.schema import ArtifactRef, BenchSettings, Job, new_id, utc_now

    ref = ArtifactRef(
        name="m.onnx",
        sha256=file_sha256(tiny_mlp_onnx),
        size_bytes=tiny_mlp_onnx.stat().st_size,
        format="onnx",
    )
    quick = dict(preset="quick", min_runs=5, min_time_s=0.01, max_time_s=1.0)
    device = device_info("cap-test")
    for asked, expected in [((1, 2, 4), [1, 2]), ((), [2])]:
        job = Job(new_id(), utc_now(), "all", (ref,), BenchSettings(threads=asked, **quick))
        records = run_measurement(tiny_mlp_onnx, job, ref, device, _threading.Event(), max_threads=2)
        assert [r.config.threads for r in records] == expected
        assert all(r.status == "ok" for r in records)
