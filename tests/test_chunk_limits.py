"""ChunkServer limits (issue 13), without a broker: a fake paho client and a fake clock, no timing.

Coalescing, the request rate and its once-per-window log, the outstanding-bytes cap, refusal of artifacts
of jobs not addressed to the device, memory bounded by the in-flight bound (references are queued, not
bytes) and round-robin fairness between a flooding device and another. bench/chunk_flood.py measures
the same with a real mosquitto.
"""

from __future__ import annotations

import json
import logging
import tracemalloc
from pathlib import Path

import pytest

from collector.fleet.chunk_policy import ChunkLimits, JobIndex
from collector.fleet.chunks import ChunkServer, ChunkServerError
from collector.store.sqlite import open_db
from wire import topics
from wire.schema import ArtifactChunk, ChunkRequest

KiB = 1024


class FakeInfo:
    def __init__(self, acked: bool) -> None:
        self.acked = acked

    def is_published(self) -> bool:
        return self.acked


class FakeClient:
    """Records (topic, index) of what is published; ``ack``: the broker acknowledges at once."""

    def __init__(self, ack: bool = True, keep: bool = True) -> None:
        self.ack, self.keep = ack, keep
        self.sent: list[tuple[str, int]] = []
        self.infos: list[FakeInfo] = []
        self.count = 0
        self.bytes = 0

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> FakeInfo:
        self.count += 1
        self.bytes += len(payload)
        if self.keep:
            self.sent.append((topic, ArtifactChunk.from_bytes(payload).index))
        info = FakeInfo(self.ack)
        if not self.ack:
            self.infos.append(info)
        return info

    def is_connected(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def artifact(tmp_path: Path, size: int, name: str = "m.onnx") -> tuple[Path, str]:
    import hashlib

    path = tmp_path / name
    data = (hashlib.sha256(name.encode()).digest() * (size // 32 + 1))[:size]
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def server_for(paths: dict[str, Path], client: FakeClient, **kw) -> ChunkServer:
    server = ChunkServer(paths=paths, start=False, **kw)
    server.attach(client)
    return server


def drain(server: ChunkServer, rounds: int = 100_000) -> int:
    sent = 0
    for _ in range(rounds):
        n = server.pump()
        if n == 0:
            break
        sent += n
    return sent


def test_duplicate_requests_are_coalesced(tmp_path):
    path, sha = artifact(tmp_path, 10 * KiB)
    client = FakeClient()
    server = server_for({sha: path}, client)
    queued = [server.admit(ChunkRequest("dev-a", sha, chunk_size=KiB)) for _ in range(100)]
    assert queued[0] == 10 and set(queued[1:]) == {0}
    # a resume request for chunks still queued queues nothing either
    assert server.admit(ChunkRequest("dev-a", sha, indices=(3, 4, 4), chunk_size=KiB)) == 0
    stats = server.stats("dev-a")
    assert (stats.queued, stats.coalesced) == (10, 990 + 2)
    assert server.pending("dev-a") == (10, 10 * KiB)
    assert drain(server) == 10
    assert sorted(i for _, i in client.sent) == list(range(10))  # each chunk once, not 100 times
    assert {t for t, _ in client.sent} == {topics.device_chunks("dev-a")}
    # once sent, asking again (a real resume) queues them again
    assert server.admit(ChunkRequest("dev-a", sha, indices=(3,), chunk_size=KiB)) == 1


def test_another_chunk_size_replaces_the_pending_transfer(tmp_path):
    path, sha = artifact(tmp_path, 64 * KiB)
    server = server_for({sha: path}, FakeClient())
    assert server.admit(ChunkRequest("dev-a", sha, chunk_size=KiB)) == 64
    assert server.admit(ChunkRequest("dev-a", sha, chunk_size=2 * KiB)) == 32
    assert server.pending("dev-a") == (32, 64 * KiB)  # not 64 + 32 chunks, 128 KiB


def test_request_rate_is_capped_and_refusals_are_logged_once_per_window(tmp_path, caplog):
    path, sha = artifact(tmp_path, 4 * KiB)
    clock = Clock()
    limits = ChunkLimits(request_burst=5, requests_per_s=0.5, refusal_log_window_s=60)
    server = server_for({sha: path}, FakeClient(), limits=limits, clock=clock)
    caplog.set_level(logging.WARNING, logger="edgebench.collector.chunks")
    accepted = [server.handle(ChunkRequest("dev-a", sha, chunk_size=KiB)) for _ in range(100)]
    assert accepted.count(True) == 5
    assert server.stats("dev-a").refused_by == {"rate": 95}
    lines = [r.getMessage() for r in caplog.records if "refusing chunk requests" in r.getMessage()]
    assert len(lines) == 1 and "dev-a" in lines[0] and "rate" in lines[0]
    # another device is not affected by dev-a's flood
    assert server.handle(ChunkRequest("dev-b", sha, chunk_size=KiB))
    # 2 s later one more token; a minute later the next refusal logs again, with the window's count
    clock.now += 2.0
    assert server.handle(ChunkRequest("dev-a", sha, chunk_size=KiB))
    clock.now += 61.0
    for _ in range(40):
        server.handle(ChunkRequest("dev-a", sha, chunk_size=KiB))
    lines = [r.getMessage() for r in caplog.records if "refusing chunk requests" in r.getMessage()]
    assert len(lines) == 2 and "95 refused in the previous window" in lines[1]


def test_inbox_is_bounded(tmp_path):
    path, sha = artifact(tmp_path, 4 * KiB)
    limits = ChunkLimits(request_burst=1000, inbox_size=10)
    server = server_for({sha: path}, FakeClient(), limits=limits)  # start=False: nobody empties the inbox
    accepted = [server.handle(ChunkRequest(f"dev-{i}", sha, chunk_size=KiB)) for i in range(30)]
    assert accepted.count(True) == 10 and server.refused == 20


def test_outstanding_bytes_are_capped_per_device(tmp_path):
    path, sha = artifact(tmp_path, 10 * KiB)
    limits = ChunkLimits(max_outstanding_bytes=4 * KiB)
    server = server_for({sha: path}, FakeClient(ack=False), limits=limits)
    assert server.admit(ChunkRequest("dev-a", sha, chunk_size=KiB)) == 0  # 10 KiB > 4 KiB: refused whole
    assert server.stats("dev-a").refused_by == {"outstanding-cap": 1}
    assert server.admit(ChunkRequest("dev-a", sha, indices=(0, 1, 2), chunk_size=KiB)) == 3
    assert drain(server) == 3  # now in flight (never acknowledged): still outstanding
    assert server.admit(ChunkRequest("dev-a", sha, indices=(3, 4), chunk_size=KiB)) == 0
    assert server.admit(ChunkRequest("dev-a", sha, indices=(3,), chunk_size=KiB)) == 1
    assert server.admit(ChunkRequest("dev-b", sha, chunk_size=KiB)) == 0  # per device: dev-b has 0 ...
    assert server.admit(ChunkRequest("dev-b", sha, indices=(0, 1, 2, 3), chunk_size=KiB)) == 4  # ... of 4


def _job(db, job_id: str, target: str, shas: list[str]) -> None:
    refs = [{"name": f"{s[:6]}.onnx", "sha256": s, "size_bytes": 1, "format": "onnx"} for s in shas]
    db.conn.execute(
        "INSERT INTO jobs (job_id, created_at, target, artifacts, state) VALUES (?, '', ?, ?, 'published')",
        (job_id, target, json.dumps(refs)),
    )
    db.conn.commit()


def test_only_artifacts_of_jobs_addressed_to_the_device_are_served(tmp_path):
    db_path = tmp_path / "edgebench.db"
    db = open_db(db_path)
    shas = {}
    for name in ("for-b", "for-lab", "for-all", "no-job"):
        path, sha = artifact(tmp_path, 3 * KiB, f"{name}.onnx")
        shas[name] = sha
        db.conn.execute("INSERT INTO artifacts (sha256, name, path) VALUES (?, ?, ?)", (sha, name, str(path)))
    db.conn.execute("INSERT INTO devices (device_id, tags) VALUES ('dev-a', '[\"pi4\", \"lab\"]')")
    db.conn.execute("INSERT INTO devices (device_id, tags) VALUES ('dev-c', '[]')")
    db.conn.commit()
    _job(db, "j1", "device:dev-b", [shas["for-b"]])
    _job(db, "j2", "tag:lab", [shas["for-lab"]])
    _job(db, "j3", "all", [shas["for-all"], shas["for-b"][:12]])
    server = ChunkServer(db_path, start=False)
    server.attach(FakeClient())

    def queued(device: str, name: str) -> int:
        return server.admit(ChunkRequest(device, shas[name], chunk_size=KiB))

    assert (queued("dev-a", "for-b"), queued("dev-a", "for-lab"), queued("dev-a", "for-all")) == (0, 3, 3)
    assert queued("dev-a", "no-job") == 0
    assert (queued("dev-b", "for-b"), queued("dev-b", "for-lab")) == (3, 0)  # dev-b: no tags known
    assert queued("dev-c", "for-lab") == 0 and queued("dev-unknown", "for-all") == 3
    assert server.stats("dev-a").refused_by == {"not-addressed": 2}
    # a job recorded later counts at once (negative answers are not cached)
    _job(db, "j4", "device:dev-c", [shas["no-job"]])
    assert queued("dev-c", "no-job") == 3
    server.close()


def test_job_index_reads_tags_of_the_device(tmp_path):
    db_path = tmp_path / "edgebench.db"
    db = open_db(db_path)
    db.conn.execute("INSERT INTO devices (device_id, tags) VALUES ('pi', '[\"lab\"]')")
    db.conn.commit()
    _job(db, "j", "tag:lab", ["a" * 64])
    index = JobIndex(db_path)
    assert index.addressed("pi", "a" * 64) and not index.addressed("pi", "b" * 64)
    assert not index.addressed("other", "a" * 64)
    index.close()


def test_memory_holds_references_not_bytes(tmp_path):
    """20 devices x a 4 MiB artifact in 1 KiB chunks = 80 MiB of chunks queued: the server's memory grows
    by the references (a bitmap per transfer), and paho is handed at most the in-flight bound."""
    path, sha = artifact(tmp_path, 4 * 1024 * KiB)
    client = FakeClient(ack=False, keep=False)  # the broker never acknowledges: worst case
    limits = ChunkLimits(max_inflight_total_bytes=256 * KiB, max_inflight_bytes=64 * KiB)
    server = server_for({sha: path}, client, limits=limits)
    server.resolve(sha)  # hash the file once, outside the measurement
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20):
            for _ in range(5):
                server.admit(ChunkRequest(f"dev-{i}", sha, chunk_size=KiB))
        queued_growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    pending = sum(server.pending(f"dev-{i}")[1] for i in range(20))
    assert pending == 20 * 4 * 1024 * KiB
    assert queued_growth < 512 * KiB, queued_growth  # vs 80 MiB of chunk bytes queued
    drain(server)
    assert server.inflight_bytes() <= 256 * KiB
    assert client.bytes <= 256 * KiB + client.count * 256  # payloads handed to paho: data + headers
    assert all(server.inflight_bytes(f"dev-{i}") <= 64 * KiB for i in range(20))
    for info in client.infos:  # the broker acknowledges: the next ones go out
        info.acked = True
    assert drain(server, rounds=1) > 0


def test_a_flooding_device_gets_one_chunk_per_round_like_everyone(tmp_path):
    big, big_sha = artifact(tmp_path, 1000 * KiB, "big.onnx")
    small, small_sha = artifact(tmp_path, 10 * KiB, "small.onnx")
    client = FakeClient()
    server = server_for({big_sha: big, small_sha: small}, client)
    for _ in range(100):
        server.admit(ChunkRequest("flooder", big_sha, chunk_size=KiB))
    server.admit(ChunkRequest("victim", small_sha, chunk_size=KiB))
    for _ in range(10):
        server.pump()
    first = [t for t, _ in client.sent[:20]]
    assert first.count(topics.device_chunks("victim")) == 10  # all of its chunks within the first 20
    assert drain(server) == 1000 - 10  # the flooder's artifact once, not 100 times


def test_pump_needs_a_client(tmp_path):
    server = ChunkServer(paths={}, start=False)
    with pytest.raises(ChunkServerError):
        server.pump()


def test_a_device_over_the_rate_keeps_one_chunk_in_flight(tmp_path):
    path, sha = artifact(tmp_path, 32 * KiB)
    client = FakeClient(ack=False)
    limits = ChunkLimits(request_burst=2, requests_per_s=0.0)
    server = server_for({sha: path}, client, limits=limits, clock=Clock())
    for device in ("flooder", "flooder", "flooder", "honest"):
        server.handle(ChunkRequest(device, sha, chunk_size=KiB))
    server.admit(ChunkRequest("flooder", sha, chunk_size=KiB))  # what the inbox held
    server.admit(ChunkRequest("honest", sha, chunk_size=KiB))
    drain(server)
    sent = [t for t, _ in client.sent]
    assert sent.count(topics.device_chunks("flooder")) == 1
    assert sent.count(topics.device_chunks("honest")) == 32  # max_inflight_chunks 64, 32 KiB < 4 MiB
