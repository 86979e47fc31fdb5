"""A job interrupted by an agent restart resumes with the artifacts it had not measured yet.

Unit level: the job store's recovery and :class:`agent.jobs.run.JobRun` with a counting runner. End to
end: a real agent process (``python -m edgebench agent run``) killed -9 in the middle of a three-artifact
job, against a real mosquitto and a real collector (its SQLite is what counts as stored).
"""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import threading
from pathlib import Path

import pytest

from agent.jobs.cache import ArtifactCache
from agent.jobs.chunk_fetch import ArtifactFetcher
from agent.jobs.run import JobRun
from agent.jobs.store import MAX_RESUMES, JobStore
from collector.config import BrokerSettings as CollectorBroker
from collector.config import CollectorConfig
from collector.ingest.ingestor import Ingestor
from testkit.fleet_peer import FleetPeer, wait_until
from testkit.models import make_mlp_onnx
from testkit.records import make_record
from tests.test_agent_service_process import DEVICE, agent_status, start_agent, write_config
from wire.schema import ArtifactRef, BenchSettings, DeviceInfo, Job, ResultRecord, new_id, utc_now
from wire.signing import generate_keypair


def make_job(refs: list[ArtifactRef], expires_at: str | None = None) -> Job:
    return Job(
        job_id=new_id(), created_at=utc_now(), target="all", artifacts=tuple(refs), expires_at=expires_at
    )


class Harness:
    """A JobRun over a real job store and cache; every artifact is cached, the runner counts calls."""

    def __init__(self, root: Path, count: int = 3):
        self.jobs = JobStore(root / "jobs")
        self.cache = ArtifactCache(root / "cache", 10**7)
        self.refs = []
        for i in range(count):
            data = bytes([i]) * 100
            ref = ArtifactRef(f"a{i}.onnx", hashlib.sha256(data).hexdigest(), len(data), "onnx")
            self.cache.path_for(ref.sha256, "onnx").write_bytes(data)
            self.refs.append(ref)
        self.measured: list[str] = []
        self.delivered: list[str] = []
        self.states: list[tuple[str, str]] = []
        fetcher = ArtifactFetcher(self.cache, "pi-1", lambda request: None)
        self.run = JobRun(
            jobs=self.jobs,
            cache=self.cache,
            fetcher=fetcher,
            runner=self.runner,
            device=lambda: DeviceInfo(device_id="pi-1"),
            deliver=self.deliver,
            set_state=lambda job, state, detail: self.states.append((state, detail)),
            progress=lambda job_id, name, p: None,
        )

    def runner(self, path, job, ref, device, cancel) -> list[ResultRecord]:
        self.measured.append(ref.name)
        return [make_record("pi-1", job_id=job.job_id, sha256=ref.sha256)]

    def deliver(self, record: ResultRecord) -> bool:
        self.delivered.append(record.result_id)
        return True


def test_recovery_requeues_an_interrupted_job_and_gives_up_after_max_resumes(tmp_path):
    store = JobStore(tmp_path / "jobs")
    job = make_job([ArtifactRef("a.onnx", "ab" * 32, 1, "onnx"), ArtifactRef("b.onnx", "cd" * 32, 1, "onnx")])
    store.add(job.job_id, job)
    store.update(job.job_id, "running", "2 artifact(s)")
    store.checkpoint(job.job_id, measured=(0,), result_ids=("r0",))
    for n in range(1, MAX_RESUMES + 1):
        [entry] = JobStore(store.dir).recover()  # what each restart sees
        assert entry.state == "received" and entry.resumes == n and entry.result_ids == ("r0",)
        assert "resuming: 1 of 2 artifact(s) measured" in entry.detail
        JobStore(store.dir).update(job.job_id, "running")
    [entry] = JobStore(store.dir).recover()
    assert entry.state == "aborted" and entry.result_ids == ("r0",)  # it keeps its result ids
    assert f"restarted {MAX_RESUMES} times" in entry.detail


def test_a_resumed_job_measures_only_what_is_left_and_reports_every_result_id(tmp_path):
    h = Harness(tmp_path)
    job = make_job(h.refs)
    h.jobs.add(job.job_id, job)
    earlier = make_record("pi-1", job_id=job.job_id, sha256=h.refs[1].sha256)
    # as if killed right after artifact 1's checkpoint, before its record reached the outbox
    h.jobs.update(job.job_id, "running")
    h.jobs.checkpoint(job.job_id, measured=(1,), result_ids=(earlier.result_id,), unsent=(earlier.to_json(),))
    assert len(JobStore(h.jobs.dir).recover()) == 1  # what the restart does
    h.jobs = JobStore(h.jobs.dir)
    h.run.jobs = h.jobs
    assert h.run.redeliver(job.job_id) == 1 and h.delivered == [earlier.result_id]
    outcome = h.run.run(job, threading.Event())
    assert h.measured == ["a0.onnx", "a2.onnx"]  # artifact 1 is not measured twice
    assert outcome.state == "done" and len(outcome.result_ids) == 3
    assert outcome.result_ids[0] == earlier.result_id and set(outcome.result_ids) == set(h.delivered)
    assert "1 of 3 measured before" in outcome.detail and "1 from before the restart" in outcome.detail
    assert ("running", "2 artifact(s)") in h.states
    saved = JobStore(h.jobs.dir).get(job.job_id)
    assert (
        sorted(saved.measured) == [0, 1, 2] and saved.unsent == () and saved.result_ids == outcome.result_ids
    )


def test_a_resumed_job_that_expired_fails_naming_each_artifact_not_measured(tmp_path):
    h = Harness(tmp_path)
    job = make_job(h.refs, expires_at="2000-01-01T00:00:00.000Z")
    h.jobs.add(job.job_id, job)
    h.jobs.update(job.job_id, "running")
    h.jobs.checkpoint(job.job_id, measured=(0,), result_ids=("r0",))
    h.jobs.recover()
    outcome = h.run.run(job, threading.Event())
    assert h.measured == [] and outcome.state == "failed" and outcome.result_ids == ("r0",)
    assert "expired at 2000-01-01" in outcome.detail and "not measured: a1.onnx, a2.onnx" in outcome.detail


def test_a_resumed_job_whose_artifact_left_the_cache_fetches_it_again_or_fails_with_the_reason(tmp_path):
    h = Harness(tmp_path)
    job = make_job(h.refs)
    h.jobs.add(job.job_id, job)
    h.jobs.update(job.job_id, "running")
    h.jobs.checkpoint(job.job_id, measured=(0,), result_ids=("r0",))
    h.jobs.recover()
    h.cache.path_for(h.refs[2].sha256, "onnx").unlink()  # evicted while the agent was down
    h.run.fetcher = ArtifactFetcher(h.cache, "pi-1", lambda request: None, chunk_timeout_s=0.1, retries=0)
    outcome = h.run.run(job, threading.Event())  # nobody serves it: the fetch fails
    assert outcome.state == "failed" and "a2.onnx" in outcome.detail and "chunks missing" in outcome.detail
    assert outcome.result_ids == ("r0",) and h.measured == []


# ---------------------------------------------------------------- a real process, kill -9


@pytest.fixture
def procs():
    started = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _ids(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # not migrated yet
        return []
    finally:
        conn.close()


def test_agent_killed_mid_job_resumes_and_measures_only_the_remaining_artifacts(
    fresh_mosquitto, tmp_path, procs, tiny_mlp_onnx, tiny_cnn_onnx
):
    key, pub = generate_keypair(tmp_path / "keys")
    config = write_config(tmp_path, fresh_mosquitto, pub)
    log = tmp_path / "agent.log"
    db = tmp_path / "collector.db"
    collector = Ingestor(
        CollectorConfig(
            db=str(db),
            client_id=f"collector-resume-{new_id()[:8]}",
            broker=CollectorBroker(host=fresh_mosquitto.host, port=fresh_mosquitto.port),
        )
    ).start()
    peer = FleetPeer(fresh_mosquitto.host, fresh_mosquitto.port, client_id="fleet-resume").start()
    try:
        assert collector.wait_connected(10)
        procs.append(start_agent(config, log))
        assert wait_until(lambda: any(s.reason == "birth" for s in peer.statuses), 30), log.read_text()[
            -2000:
        ]
        third = make_mlp_onnx(tmp_path / "mlp_wide.onnx", hidden=48, seed=3)
        refs = [peer.add_artifact(p) for p in (tiny_mlp_onnx, tiny_cnn_onnx, third)]
        settings = BenchSettings(preset="quick", min_runs=5, min_time_s=1.5, max_time_s=3.0)
        job = peer.make_job(refs, f"device:{DEVICE}", settings)
        peer.send_job(job, key, DEVICE)
        query = "SELECT result_id, artifact_sha256, threads, batch FROM results WHERE job_id = ?"
        assert wait_until(lambda: len(_ids(db, query, (job.job_id,))) >= 1, 90), log.read_text()[-3000:]
        assert peer.event(job.job_id, "done") is None  # mid-job: artifacts are left to measure
        procs[0].send_signal(signal.SIGKILL)
        assert procs[0].wait(timeout=10) == -9
        before = JobStore(tmp_path / "data" / "jobs").get(job.job_id)
        assert before.state == "running" and 1 <= len(before.measured) < 3
        assert len(before.result_ids) == len(before.measured)  # the entry keeps its result ids
        remaining = 3 - len(before.measured)
        procs.append(start_agent(config, log))
        assert wait_until(lambda: peer.event(job.job_id, "done"), 120), log.read_text()[-3000:]
        done = peer.event(job.job_id, "done")
        produced = set(done.result_ids)
        assert wait_until(lambda: {r[0] for r in _ids(db, query, (job.job_id,))} >= produced, 30)
        rows = _ids(db, query, (job.job_id,))
        stored = {r[0] for r in rows}
        cells = {(r[1], r[2], r[3]) for r in rows}
        lost, duplicated = len(produced - stored), len(stored) - len(cells)
        print(
            f"agent kill -9 mid-job: produced {len(produced)} / stored unique {len(stored)} / "
            f"lost {lost} / duplicated {duplicated}"
        )
        assert set(before.result_ids) <= produced  # the final event lists those from before too
        assert len(produced) == 3 and lost == 0 and duplicated == 0 and stored == produced
        assert {r[1] for r in rows} == {r.sha256 for r in refs}
        resumed = [e for e in peer.events if e.job_id == job.job_id and e.state == "received"]
        assert any("resuming" in e.detail for e in resumed)
        running = [e.detail for e in peer.events if e.job_id == job.job_id and e.state == "running"]
        assert running[-1] == f"{remaining} artifact(s)"  # only what was left ran after the restart
        assert "aborted" not in peer.states(job.job_id)
        assert agent_status(config)["jobs"].get("done") == 1
    finally:
        peer.stop()
        collector.stop()
