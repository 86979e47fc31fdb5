"""The agent manages its own disk: partial downloads never stay, the artifact cache gives way (least
recently used first, never the running job's artifacts) before results, job state or the next
artifact are refused for space, and ``agent status`` says what was evicted.

Real 4 MB tmpfs (testkit/small_disk.py, needs root), real SQLite, real chunked delivery over a
real mosquitto for the service scenario.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import replace

import pytest

from agent.delivery.keeper import MessageKeeper
from agent.delivery.outbox import MemoryOutbox, OutboxError, OutboxFull, SqliteOutbox
from agent.delivery.room import RoomMakingOutbox
from agent.jobs.cache import ArtifactCache
from agent.jobs.chunk_fetch import ArtifactFetcher, DeliveryError
from agent.jobs.evictions import EVICTIONS_FILE, read_evictions
from agent.jobs.store import JobStore
from agent.service.daemon import AgentService
from testkit.fleet_peer import FleetPeer, wait_until
from tests.test_agent_service import DEVICE, QUICK, make_config
from wire.schema import ArtifactChunk, ArtifactRef, ChunkRequest, DeviceInfo, new_id
from wire.signing import generate_keypair

PAYLOAD = b"r" * 8192


def ref_for(data: bytes, name: str = "m.onnx", sha: str | None = None) -> ArtifactRef:
    return ArtifactRef(
        name=name, sha256=sha or hashlib.sha256(data).hexdigest(), size_bytes=len(data), format="onnx"
    )


def put_cached(cache: ArtifactCache, data: bytes, used_at: float) -> ArtifactRef:
    """An artifact already in the cache, last used at ``used_at`` (its mtime)."""
    ref = ref_for(data, name=f"cached-{hashlib.sha256(data).hexdigest()[:8]}.onnx")
    path = cache.path_for(ref.sha256, ref.format)
    path.write_bytes(data)
    os.utime(path, (used_at, used_at))
    return ref


class Source:
    """Answers chunk requests from memory on another thread; ``serve=False``: never answers."""

    def __init__(self, data: bytes, sha: str | None = None, serve: bool = True):
        self.data, self.sha, self.serve = data, sha or hashlib.sha256(data).hexdigest(), serve
        self.fetcher: ArtifactFetcher | None = None
        self.before_serving = threading.Event()  # set by the test when chunks may flow

    def __call__(self, request: ChunkRequest) -> None:
        if self.serve:
            threading.Thread(target=self._serve, args=(request,), daemon=True).start()

    def _serve(self, request: ChunkRequest) -> None:
        self.before_serving.wait(10)
        size = request.chunk_size
        total = -(-len(self.data) // size)
        for i in request.indices or range(total):
            chunk = ArtifactChunk(self.sha, i, total, len(self.data), self.data[i * size : (i + 1) * size])
            self.fetcher.on_chunk(chunk.to_bytes())


def fetcher_for(cache: ArtifactCache, source: Source, **kw) -> ArtifactFetcher:
    opts = dict(chunk_size=1024, chunk_timeout_s=0.2, retries=1)
    opts.update(kw)
    fetcher = ArtifactFetcher(cache, "pi-1", source, **opts)
    source.fetcher = fetcher
    return fetcher


def partials(cache: ArtifactCache) -> list:
    return sorted(cache.partial_dir.glob("*.part"))


# ---------------------------------------------------------------- every failed fetch cleans up


def test_failed_fetch_leaves_no_partial_file_on_any_failure_path(small_disk, monkeypatch):
    cache = ArtifactCache(small_disk.root / "cache", 10**7)
    data = os.urandom(64 * 1024)

    # sha256 mismatch (the served bytes do not hash to what the job says)
    source = Source(data, sha="ab" * 32)
    source.before_serving.set()
    with pytest.raises(DeliveryError, match="sha256 mismatch"):
        fetcher_for(cache, source).obtain(ref_for(data, sha="ab" * 32))
    assert partials(cache) == [] and cache.entries() == []

    # timeout: nothing ever arrives
    with pytest.raises(DeliveryError, match="chunks missing"):
        fetcher_for(cache, Source(data, serve=False)).obtain(ref_for(data))
    assert partials(cache) == []

    # cancel while waiting for chunks
    cancel = threading.Event()
    fetcher = fetcher_for(cache, Source(data, serve=False), chunk_timeout_s=30)
    threading.Timer(0.3, cancel.set).start()
    with pytest.raises(DeliveryError, match="cancelled"):
        fetcher.obtain(ref_for(data), cancel)
    assert partials(cache) == []

    # a chunk cannot be written: a sparse partial file (no fallocate) on a disk that fills meanwhile
    monkeypatch.setattr("agent.jobs.chunk_fetch._reserve", lambda fd, size: os.ftruncate(fd, size))
    source = Source(data)
    fetcher = fetcher_for(cache, source)
    errors: list[BaseException] = []
    worker = threading.Thread(target=lambda: _catch(errors, fetcher.obtain, ref_for(data)))
    worker.start()
    assert wait_until(lambda: partials(cache) != [], 10)
    small_disk.fill()
    source.before_serving.set()
    worker.join(30)
    assert len(errors) == 1 and "writing chunk" in str(errors[0]), errors
    assert partials(cache) == []
    monkeypatch.undo()

    # no space for the allocation, and nothing in the cache to evict
    small_disk.free()
    small_disk.fill(leave_bytes=16 * 1024)
    with pytest.raises(DeliveryError, match="no space left on the device for 65536 bytes"):
        fetcher_for(cache, Source(data)).obtain(ref_for(data))
    assert partials(cache) == []

    # what a killed agent left behind goes at the next start
    (cache.partial_dir / f"{'cd' * 32}.part").write_bytes(b"x" * 100)
    assert len(cache.clear_partials()) == 1 and partials(cache) == []


def _catch(errors: list[BaseException], fn, *args) -> None:
    try:
        fn(*args)
    except BaseException as exc:  # the test inspects it
        errors.append(exc)


def test_allocation_evicts_the_least_recently_used_but_never_a_pinned_artifact(small_disk):
    cache = ArtifactCache(small_disk.root / "cache", 10**7)
    oldest = put_cached(cache, os.urandom(512 * 1024), 1000)  # pinned below: must survive
    older = put_cached(cache, os.urandom(512 * 1024), 2000)
    newer = put_cached(cache, os.urandom(512 * 1024), 3000)
    data = os.urandom(400 * 1024)
    small_disk.fill(leave_bytes=160 * 1024)  # lacking: 400 KB + margin - 160 KB, one file's worth
    source = Source(data)
    source.before_serving.set()
    with cache.pinned([oldest, ref_for(data)]):
        path = fetcher_for(cache, source, chunk_timeout_s=2).obtain(ref_for(data))
    assert path.read_bytes() == data
    present = {p.name[:64] for p in cache.entries()}
    assert oldest.sha256 in present and newer.sha256 in present and older.sha256 not in present
    log = read_evictions(cache.root / EVICTIONS_FILE)
    assert log.count == 1 and log.recent[0].file == f"{older.sha256}.onnx"
    assert log.recent[0].reason == "room for m.onnx" and log.recent[0].bytes >= 512 * 1024


# ---------------------------------------------------------------- outbox and job state come first


def test_outbox_and_job_state_on_a_full_disk_evict_the_cache_first(small_disk):
    cache = ArtifactCache(small_disk.root / "agent" / "cache", 10**7)
    first = put_cached(cache, os.urandom(384 * 1024), 1000)
    second = put_cached(cache, os.urandom(384 * 1024), 2000)
    box = RoomMakingOutbox(SqliteOutbox(small_disk.root / "agent" / "outbox.db"), cache.free_for)
    jobs = JobStore(small_disk.root / "agent" / "jobs", make_room=cache.free_for)
    job_id = new_id()
    jobs.add(job_id, None)
    small_disk.fill()
    stored = [box.put("edgebench/v1/devices/d/results", PAYLOAD + bytes([i])) for i in range(5)]
    assert len(stored) == 5 and box.rooms_made >= 1  # no OutboxFull: the cache paid for it
    assert first.sha256 not in {p.name[:64] for p in cache.entries()}  # the least recently used went
    assert "room for the outbox" in {e.reason for e in read_evictions(cache.root / EVICTIONS_FILE).recent}
    small_disk.fill()
    jobs.update(job_id, "running", "x" * 20000)
    assert jobs.unsaved == set() and JobStore(jobs.dir).get(job_id).state == "running"
    assert cache.entries() == []  # the second went for the job state
    reasons = [e.reason for e in read_evictions(cache.root / EVICTIONS_FILE).recent]
    assert reasons[-1] == "room for the job state" and second.sha256 not in str(cache.entries())
    small_disk.fill()
    with pytest.raises(OutboxFull):  # nothing left to give: the keeper holds, as before
        for i in range(50):
            box.put("edgebench/v1/devices/d/results", PAYLOAD + bytes([100 + i]))
    assert [r.id for r in box.pending()][:5] == stored
    box.close()


# ---------------------------------------------------------------- the phantom "1 pending"


class SwitchOutbox(MemoryOutbox):
    """A MemoryOutbox whose writes answer OutboxFull (or another OutboxError) on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.full_puts = self.full_acks = False
        self.broken = False

    def put(self, *args, **kwargs) -> int:
        if self.broken:
            raise OutboxError("outbox x: disk I/O error")
        if self.full_puts:
            raise OutboxFull("outbox x: database or disk is full")
        return super().put(*args, **kwargs)

    def ack(self, row_id: int) -> bool:
        if self.full_acks:
            raise OutboxFull("outbox x: database or disk is full")
        return super().ack(row_id)


def test_a_delivered_row_whose_removal_the_disk_refuses_is_not_a_phantom_pending_row():
    inner = SwitchOutbox()
    box = RoomMakingOutbox(inner, lambda need, what: 0)  # nothing to evict
    row = box.put("edgebench/v1/devices/d/results", b"x")
    inner.full_acks = True
    assert box.ack(row)  # PUBACKed: remembered, not an error
    assert box.stats().pending == 0 and box.pending() == []  # neither counted nor sent again
    assert inner.stats().pending == 1  # the disk is one step behind...
    inner.full_acks = False
    box.put("edgebench/v1/devices/d/results", b"y")  # ...until the next write finds room
    assert [r.payload for r in inner.pending()] == [b"y"] and box.deferred_acks == {}


def test_the_worker_waiting_on_a_full_disk_is_not_counted_after_an_error_ends_the_wait():
    inner = SwitchOutbox()
    stopping = threading.Event()
    keeper = MessageKeeper(
        lambda topic, payload: inner.put(topic, payload),
        lambda topic, payload: None,
        stopping=stopping,
        may_wait=lambda: True,
        on_error=lambda message: None,
        max_delay_s=0.05,
    )
    inner.full_puts = True
    threading.Timer(0.3, lambda: setattr(inner, "broken", True)).start()  # ENOSPC turns into EIO
    with pytest.raises(OutboxError, match="I/O"):
        keeper.store("edgebench/v1/devices/d/results", b"x", "result x")
    assert keeper.held == 0  # it used to stay 1: "1 pending" in every heartbeat from then on


# ---------------------------------------------------------------- the service, end to end


@pytest.fixture
def keys(tmp_path):
    return generate_keypair(tmp_path / "keys", "collector")


def test_push_that_does_not_fit_a_full_cache_evicts_lru_and_runs(
    small_disk, fresh_mosquitto, keys, tmp_path, tiny_mlp_onnx, tiny_cnn_onnx
):
    config = replace(make_config(tmp_path, fresh_mosquitto, keys), data_dir=small_disk.root / "agent")
    agent = AgentService(config, device=DeviceInfo(device_id=DEVICE)).start()
    peer = FleetPeer(fresh_mosquitto.host, fresh_mosquitto.port, client_id="collector-evict").start()
    try:
        assert agent.transport.wait_connected(10)
        cached = agent.cache.path_for(hashlib.sha256(tiny_mlp_onnx.read_bytes()).hexdigest(), "onnx")
        cached.write_bytes(tiny_mlp_onnx.read_bytes())
        os.utime(cached, (1000, 1000))  # the least recently used of all: only its pin protects it
        old = put_cached(agent.cache, os.urandom(512 * 1024), 2000)
        put_cached(agent.cache, os.urandom(512 * 1024), 3000)
        small_disk.fill(leave_bytes=128 * 1024)  # room for events, not for the next artifact's margin
        refs = [peer.add_artifact(tiny_mlp_onnx), peer.add_artifact(tiny_cnn_onnx)]
        job = peer.make_job(refs, f"device:{DEVICE}", QUICK)
        peer.send_job(job, keys[0], DEVICE)
        assert wait_until(lambda: peer.event(job.job_id, "done") or peer.event(job.job_id, "failed"), 120)
        assert peer.event(job.job_id, "done") is not None, [e.detail for e in peer.events]
        assert wait_until(lambda: len(set(peer.result_ids())) == 2, 30)
        assert {r.artifact.sha256 for r in peer.results} == {r.sha256 for r in refs}
        present = {p.name for p in agent.cache.entries()}
        assert cached.name in present  # the running job's artifact stayed
        assert f"{old.sha256}.onnx" not in present  # the least recently used other one went
        summary = read_evictions(agent.cache.root / EVICTIONS_FILE)
        evicted = {e.file for e in summary.recent}
        assert f"{old.sha256}.onnx" in evicted and not evicted & {f"{r.sha256}.onnx" for r in refs}
        assert summary.recent[0].reason == f"room for {tiny_cnn_onnx.name}"
        assert not list(agent.cache.partial_dir.glob("*.part"))
        assert not agent.keeper.disk_full and agent.keeper.held == 0
    finally:
        agent.stop(flush_timeout_s=1.0)
        peer.stop()
    from click.testing import CliRunner

    from agent.service.cli import agent_group
    from agent.service.status import agent_status

    info = agent_status(config)
    assert info["evictions"]["count"] >= 1
    assert info["evictions"]["recent"][0]["file"] == f"{old.sha256}.onnx"
    out = CliRunner().invoke(
        agent_group, ["status", "--data-dir", str(config.data_dir), "--device-id", DEVICE]
    )
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    print("\n".join(lines[lines.index(next(x for x in lines if x.startswith("evicted"))) :]))
    assert f"room for {tiny_cnn_onnx.name}" in out.output
