"""Job expiry and replay (issue 13): expired jobs, jobs issued before the device joined, the same job
delivered twice (replayed payload, also after an agent restart with a pruned job store), `fleet push`'s
``expires_at`` and ``--expires-in``, and the push's chunk policy.

The time rules with an injected clock (exact, no broker); the rest with a real mosquitto, the real agent
service (its runner counts calls instead of benchmarking) and a real paho peer.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.jobs.replay import CLOCK_SKEW, IDENTITY_FILE, LEGACY_MAX_AGE, SEEN_FILE, ReplayGuard
from agent.service.config import AgentConfig, BrokerSettings, HeartbeatSettings, JobsSettings
from agent.service.daemon import AgentService
from collector.fleet.chunks import ChunkServer
from collector.fleet.cli import fleet_group
from collector.fleet.operations import FleetError, RegisteredArtifact, addressed_by, build_job, parse_duration
from collector.store.sqlite import open_db, upsert_device
from testkit.fleet_peer import FleetPeer, RawSubscriber, wait_until
from testkit.records import make_status
from wire import topics
from wire.artifacts import file_sha256
from wire.schema import ArtifactRef, BenchSettings, CancelJob, ChunkRequest, DeviceInfo, Job, new_id
from wire.signing import generate_keypair
from wire.timestamps import parse_wire, to_wire

DEVICE = "pi-replay"
T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
SHA = "cd" * 32


class FakeClock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def now_ms() -> datetime:
    """The current time at the wire's resolution (milliseconds)."""
    return parse_wire(to_wire(datetime.now(timezone.utc)))


def job_at(created: datetime, expires: datetime | None, target: str = "all") -> Job:
    ref = ArtifactRef(name="m.onnx", sha256=SHA, size_bytes=10, format="onnx")
    return Job(
        job_id=new_id(),
        created_at=to_wire(created),
        target=target,
        artifacts=(ref,),
        expires_at=None if expires is None else to_wire(expires),
    )


# ---------------------------------------------------------------- the rules, exact (no broker)


def test_first_start_is_recorded_once(tmp_path):
    clock = FakeClock(T0)
    guard = ReplayGuard(tmp_path, clock=clock)
    assert guard.first_started_at == T0
    body = json.loads((tmp_path / IDENTITY_FILE).read_text())
    assert body == {"schema_version": 1, "first_started_at": "2025-06-01T12:00:00.000Z"}
    clock.now = T0 + timedelta(days=3)
    assert ReplayGuard(tmp_path, clock=clock).first_started_at == T0  # a restart does not move it
    (tmp_path / IDENTITY_FILE).write_text("{not json")
    assert ReplayGuard(tmp_path, clock=clock).first_started_at == clock.now  # unreadable: stricter


def test_expiry_and_issued_before_joining_with_the_stated_skew(tmp_path, caplog):
    clock = FakeClock(T0)
    guard = ReplayGuard(tmp_path, clock=clock)
    clock.now = T0 + timedelta(hours=1)
    fresh = job_at(T0 + timedelta(minutes=30), T0 + timedelta(hours=2))
    assert guard.refusal(fresh) is None
    # expired: only once more than CLOCK_SKEW (5 min) past expires_at
    expiring = job_at(T0 + timedelta(minutes=1), clock.now - CLOCK_SKEW)
    assert guard.refusal(expiring) is None
    late = replace(expiring, expires_at=to_wire(clock.now - CLOCK_SKEW - timedelta(milliseconds=1)))
    assert guard.refusal(late) == f"expired at {late.expires_at}"
    # issued before the first start: refused once more than CLOCK_SKEW before it
    assert guard.refusal(job_at(T0 - CLOCK_SKEW, T0 + timedelta(days=1))) is None
    early = job_at(T0 - CLOCK_SKEW - timedelta(milliseconds=1), T0 + timedelta(days=1))
    reason = guard.refusal(early)
    assert reason is not None and reason.startswith("issued before this device joined the fleet")
    assert "device first started 2025-06-01T12:00:00.000Z" in reason
    # legacy (no expires_at): accepted and logged, until created_at + LEGACY_MAX_AGE
    legacy = job_at(T0 + timedelta(minutes=10), None)
    with caplog.at_level(logging.WARNING, logger="edgebench.agent.replay"):
        assert guard.refusal(legacy) is None
    assert "no expires_at" in caplog.text and legacy.job_id in caplog.text
    clock.now = T0 + timedelta(minutes=10) + LEGACY_MAX_AGE + CLOCK_SKEW + timedelta(seconds=1)
    assert "no expires_at" in (guard.refusal(legacy) or "")
    # a timestamp that is not a UTC time
    assert "bad timestamp" in (guard.refusal(replace(fresh, expires_at="tomorrow")) or "")
    assert guard.refusal(CancelJob(new_id(), to_wire(T0))) is None


def test_seen_ids_are_durable_and_forgotten_only_after_expiry(tmp_path):
    clock = FakeClock(T0)
    guard = ReplayGuard(tmp_path, clock=clock)
    short = job_at(T0, T0 + timedelta(hours=1))
    legacy = job_at(T0, None)
    cancel = CancelJob(new_id(), to_wire(T0))
    for message in (short, legacy, cancel):
        guard.remember(message)
    assert all(guard.seen(m.job_id) for m in (short, legacy, cancel))
    stored = json.loads((tmp_path / SEEN_FILE).read_text())
    assert stored["schema_version"] == 1 and len(stored["jobs"]) == 3
    # a restart (a new guard on the same directory) still knows them
    clock.now = T0 + timedelta(hours=1) + CLOCK_SKEW
    again = ReplayGuard(tmp_path, clock=clock)
    assert all(again.seen(m.job_id) for m in (short, legacy, cancel))
    # past expires_at + skew the short job would be refused anyway: forgotten, on disk too
    clock.now += timedelta(milliseconds=1)
    assert not again.seen(short.job_id)
    assert "expired" in (again.refusal(short) or "")
    again.remember(job_at(clock.now, clock.now + timedelta(days=1)))
    ids = {e["job_id"] for e in json.loads((tmp_path / SEEN_FILE).read_text())["jobs"]}
    assert short.job_id not in ids and legacy.job_id in ids and cancel.job_id in ids
    # legacy: kept created_at + 30 days (+ skew); a cancel: 30 days from when it arrived
    clock.now = T0 + LEGACY_MAX_AGE + CLOCK_SKEW + timedelta(seconds=1)
    later = ReplayGuard(tmp_path, clock=clock)
    assert not later.seen(legacy.job_id) and not later.seen(cancel.job_id)


def test_fleet_durations_and_build_job_expiry():
    assert parse_duration("30m") == 1800 and parse_duration("12h") == 43200
    assert parse_duration("7d") == 7 * 86400 and parse_duration("1d12h") == 129600
    assert parse_duration("90") == 90 and parse_duration(" 2W ") == 14 * 86400
    for bad in ("", "7x", "0m", "-1d", "d", "1.5h", "7 d"):
        with pytest.raises(FleetError, match="duration"):
            parse_duration(bad)
    art = RegisteredArtifact(ArtifactRef("m.onnx", SHA, 10, "onnx"), Path("m.onnx"), "file")
    job = build_job([art], "all", BenchSettings(), expires_in_s=3600, clock=lambda: T0)
    assert job.created_at == "2025-06-01T12:00:00.000Z" and job.expires_at == "2025-06-01T13:00:00.000Z"
    assert build_job([art], "all", BenchSettings()).expires_at is None


def test_push_chunks_go_only_to_addressed_devices(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"\x08" + b"x" * 3000)
    sha = file_sha256(model)
    art = RegisteredArtifact(ArtifactRef("m.onnx", sha, 3001, "onnx"), model, "file")
    for target, devices, allowed, refused in (
        ("tag:lab", ["pi-a", "pi-b"], ["pi-a", "pi-b"], ["pi-c"]),
        ("device:pi-a", ["pi-a"], ["pi-a"], ["pi-b"]),
        ("all", ["pi-a"], ["pi-a", "pi-new"], []),
    ):
        server = ChunkServer(paths={sha: model}, addressed=addressed_by(target, devices, [art]), start=False)
        try:
            for device in allowed:
                assert server.admit(ChunkRequest(device, sha, chunk_size=1024)) == 3, (target, device)
            for device in refused:
                assert server.admit(ChunkRequest(device, sha, chunk_size=1024)) == 0, (target, device)
                assert server.stats(device).refused_by == {"not-addressed": 1}
            other = ChunkRequest(devices[0], "ef" * 32, chunk_size=1024)  # not this push's artifact
            assert server.admit(other) == 0
        finally:
            server.close()


# ---------------------------------------------------------------- the agent, on a real broker


@pytest.fixture
def keys(tmp_path):
    return generate_keypair(tmp_path / "keys", "collector")


class CountingRunner:
    """Stands in for the measurement: counts runs per job (nothing is benchmarked)."""

    def __init__(self) -> None:
        self.runs: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, path, job, ref, device, cancel):
        with self._lock:
            self.runs[job.job_id] = self.runs.get(job.job_id, 0) + 1
        return []


@pytest.fixture
def agents(tmp_path, keys):
    started: list[AgentService] = []

    def start(broker, runner: CountingRunner, clock=None) -> AgentService:
        config = AgentConfig(
            device_id=DEVICE,
            tags=("lab",),
            data_dir=tmp_path / "agent-data",
            broker=BrokerSettings(
                host=broker.host, port=broker.port, reconnect_min_s=0.2, reconnect_max_s=1.0
            ),
            jobs=JobsSettings(trusted_keys=(str(keys[1]),), chunk_size=1024, chunk_timeout_s=0.5),
            heartbeat=HeartbeatSettings(interval_s=0.5),
        ).validate()
        extra = {"clock": clock} if clock is not None else {}
        service = AgentService(config, device=DeviceInfo(device_id=DEVICE), runner=runner, **extra)
        started.append(service.start())
        assert service.transport.wait_connected(10)
        return service

    yield start
    for service in started:
        if not service.stopping.is_set():
            service.stop(flush_timeout_s=1.0)


@pytest.fixture
def peer(fresh_mosquitto):
    with FleetPeer(fresh_mosquitto.host, fresh_mosquitto.port) as p:
        yield p


def _job(peer: FleetPeer, model: Path, target: str, created: datetime, expires: datetime | None) -> Job:
    job = peer.make_job([peer.add_artifact(model)], target)
    return replace(job, created_at=to_wire(created), expires_at=None if expires is None else to_wire(expires))


def _subscribed(capture: RawSubscriber, peer: FleetPeer) -> RawSubscriber:
    """Started, and its subscription in place (a probe it subscribed to came back)."""
    capture.start()
    probe = f"{topics.PREFIX}/test/probe"
    for _ in range(100):
        peer.client.publish(probe, b"probe", qos=1).wait_for_publish(5)
        if wait_until(lambda: bool(_on(capture, probe)), 0.1):
            return capture
    raise TimeoutError("the capturing subscriber never got its probe")


def _on(capture: RawSubscriber, topic: str) -> list[bytes]:
    return [p for t, p in list(capture.messages) if t == topic]


def _final(peer: FleetPeer, job_id: str, timeout_s: float = 60) -> str:
    final = ("done", "failed", "rejected")
    assert wait_until(lambda: any(s in peer.states(job_id) for s in final), timeout_s)
    return next(s for s in peer.states(job_id) if s in final)


def test_expired_job_is_rejected(fresh_mosquitto, peer, agents, keys, tiny_mlp_onnx):
    clock = FakeClock(now_ms())
    runner = CountingRunner()
    agents(fresh_mosquitto, runner, clock)
    start = clock.now
    clock.now = start + timedelta(hours=1)
    expired = _job(peer, tiny_mlp_onnx, f"device:{DEVICE}", start, start + timedelta(minutes=30))
    peer.send_job(expired, keys[0], DEVICE)
    assert _final(peer, expired.job_id, 15) == "rejected"
    assert peer.event(expired.job_id, "rejected").detail == f"expired at {expired.expires_at}"
    assert peer.states(expired.job_id) == ["rejected"] and runner.runs == {} and peer.chunk_requests == []


def test_job_created_before_the_device_first_started_is_rejected(fresh_mosquitto, peer, agents, keys,
                                                                 tiny_mlp_onnx):  # fmt: skip
    clock = FakeClock(now_ms())
    runner = CountingRunner()
    agent = agents(fresh_mosquitto, runner, clock)
    joined = clock.now
    assert agent.replay.first_started_at == joined
    expires = joined + timedelta(days=7)
    before = _job(peer, tiny_mlp_onnx, "all", joined - CLOCK_SKEW - timedelta(seconds=1), expires)
    within_skew = _job(peer, tiny_mlp_onnx, "all", joined - CLOCK_SKEW + timedelta(seconds=1), expires)
    peer.send_job(before, keys[0], DEVICE, target="all")
    peer.send_job(within_skew, keys[0], DEVICE, target="all")
    assert _final(peer, before.job_id, 15) == "rejected"
    detail = peer.event(before.job_id, "rejected").detail
    assert detail.startswith("issued before this device joined the fleet") and to_wire(joined) in detail
    assert _final(peer, within_skew.job_id) == "done"
    assert runner.runs == {within_skew.job_id: 1}


@pytest.mark.parametrize("target", ["all", "tag:lab"])
def test_replayed_job_runs_once_also_after_restart_and_pruned_job_store(
    fresh_mosquitto, peer, agents, keys, tiny_mlp_onnx, tmp_path, target, caplog
):
    runner = CountingRunner()
    agent = agents(fresh_mosquitto, runner)
    topic = topics.jobs_topic_for_target(target)
    capture = _subscribed(
        RawSubscriber(fresh_mosquitto.host, fresh_mosquitto.port, f"{topics.PREFIX}/#"), peer
    )
    now = datetime.now(timezone.utc)
    job = _job(peer, tiny_mlp_onnx, target, now, now + timedelta(days=7))
    try:
        peer.send_job(job, keys[0], DEVICE, target=target)
        assert wait_until(lambda: len(_on(capture, topic)) == 1, 10)
        assert _final(peer, job.job_id) == "done"
    finally:
        capture.stop()
    [captured] = _on(capture, topic)

    def replay_then_mark(label: str) -> None:
        for _ in range(2):  # the captured bytes, as an attacker (or a broker redelivery) would send them
            peer.client.publish(topic, captured, qos=1).wait_for_publish(10)
        marker = _job(peer, tiny_mlp_onnx, target, datetime.now(timezone.utc), None)  # legacy: logged
        with caplog.at_level(logging.WARNING, logger="edgebench.agent.replay"):
            peer.send_job(marker, keys[0], DEVICE, target=target)  # same topic: handled after the replays
            assert _final(peer, marker.job_id) == "done", label
        assert f"job {marker.job_id} has no expires_at" in caplog.text

    replay_then_mark("replayed to the running agent")
    assert runner.runs[job.job_id] == 1 and peer.states(job.job_id).count("received") == 1
    # restart with the job store pruned (its files gone): the seen set still knows the job
    agent.stop(flush_timeout_s=2.0)
    jobs_dir = tmp_path / "agent-data" / "jobs"
    shutil.rmtree(jobs_dir)
    assert job.job_id in (tmp_path / "agent-data" / SEEN_FILE).read_text()
    agent = agents(fresh_mosquitto, runner)
    assert agent.jobs.get(job.job_id) is None
    replay_then_mark("replayed after a restart")
    assert runner.runs[job.job_id] == 1 and peer.states(job.job_id).count("received") == 1
    assert agent.jobs.get(job.job_id) is None  # ignored, not even recorded again


# ---------------------------------------------------------------- fleet push


def _push(db_path: Path, key: Path, broker, *extra: str):
    return CliRunner().invoke(
        fleet_group,
        ["push", "--to", "pi-x", "--db", str(db_path), "--key", str(key), "--no-wait",
         "--broker", f"{broker.host}:{broker.port}", *extra],
    )  # fmt: skip


def test_fleet_push_sets_expires_at(mosquitto, db_path, tmp_path, tiny_mlp_onnx):
    key, _ = generate_keypair(tmp_path / "keys", "collector")
    upsert_device(open_db(db_path), make_status("pi-x"))
    config = tmp_path / "collector.toml"
    config.write_text("job_expiry_s = 3600\n")
    capture = RawSubscriber(mosquitto.host, mosquitto.port, f"{topics.PREFIX}/#")
    with FleetPeer(mosquitto.host, mosquitto.port, persistent=False) as probe:
        _subscribed(capture, probe)
    topic = topics.device_jobs("pi-x")
    try:
        for extra, expected in (
            ((), timedelta(days=7)),  # the default: CollectorConfig.job_expiry_s
            (("--expires-in", "12h"), timedelta(hours=12)),
            (("--config", str(config)), timedelta(hours=1)),
            (("--config", str(config), "--expires-in", "30m"), timedelta(minutes=30)),
        ):
            before = len(_on(capture, topic))
            result = _push(db_path, key, mosquitto, str(tiny_mlp_onnx), *extra)
            assert result.exit_code == 0, result.output
            assert wait_until(lambda n=before: len(_on(capture, topic)) == n + 1, 10)
            job = Job.from_json(_on(capture, topic)[-1])
            assert job.job_id in result.output and job.expires_at is not None
            assert parse_wire(job.expires_at) - parse_wire(job.created_at) == expected, extra
    finally:
        capture.stop()


def test_fleet_push_bad_expires_in_is_one_line_exit_2(db_path, tmp_path, tiny_mlp_onnx):
    key, _ = generate_keypair(tmp_path / "keys", "collector")
    upsert_device(open_db(db_path), make_status("pi-x"))
    for bad in ("7x", "0m", "-1d", "soon", ""):
        result = CliRunner().invoke(
            fleet_group,
            ["push", str(tiny_mlp_onnx), "--to", "pi-x", "--db", str(db_path), "--key", str(key),
             "--expires-in", bad],
        )  # fmt: skip
        assert result.exit_code == 2, (bad, result.output)
        errors = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and "--expires-in" in errors[0] and "duration" in errors[0], result.output
        assert "Traceback" not in result.output
