"""The chunk server on a real broker: all chunks, resume with missing indices, unknown and tampered files,
artifacts of jobs not addressed to the device (limits without a broker: tests/test_chunk_limits.py)."""

from __future__ import annotations

import shutil

import pytest

from collector.config import BrokerSettings
from collector.fleet.chunks import ChunkServer
from collector.mqtt.client import make_client
from collector.store.sqlite import open_db, record_job, register_artifact
from testkit.mqtt_peer import Peer, wait_for
from wire import topics
from wire.artifacts import file_sha256
from wire.schema import ArtifactChunk, ArtifactRef, BenchSettings, ChunkRequest, Job, new_id, utc_now


@pytest.fixture
def served(mosquitto, db_path, tmp_path, tiny_mlp_onnx):
    model = tmp_path / "m.onnx"
    shutil.copy(tiny_mlp_onnx, model)
    sha = file_sha256(model)
    db = open_db(db_path)
    ref = ArtifactRef("m.onnx", sha, model.stat().st_size, "onnx")
    register_artifact(db, ref, path=model)
    job = Job(new_id(), utc_now(), "device:dev-c", (ref,), BenchSettings())
    record_job(db, job)  # the chunk server serves only artifacts of jobs addressed to the device
    client = make_client(
        BrokerSettings(host=mosquitto.host, port=mosquitto.port), "chunk-test", persistent=False
    )
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    server = ChunkServer(db_path)
    server.attach(client)
    device = Peer(mosquitto.port, "chunk-device")
    device.subscribe(topics.device_chunks("dev-c"))
    yield server, device, model, sha
    server.close()
    device.close()
    client.disconnect()
    client.loop_stop()


def _chunks(device):
    return [ArtifactChunk.from_bytes(p) for _, p in device.received]


def test_serves_every_chunk_then_only_missing_ones(served):
    server, device, model, sha = served
    size = model.stat().st_size
    total = -(-size // 1024)
    server.handle(ChunkRequest("dev-c", sha, chunk_size=1024))
    assert wait_for(lambda: len(device.received) == total, 10)
    chunks = sorted(_chunks(device), key=lambda c: c.index)
    assert b"".join(c.data for c in chunks) == model.read_bytes()
    assert {c.total for c in chunks} == {total} and {c.size_bytes for c in chunks} == {size}
    device.received.clear()
    server.handle(ChunkRequest("dev-c", sha, indices=(1, 0, 1, 999), chunk_size=1024))  # resume
    assert wait_for(lambda: len(device.received) == 2, 10)
    assert sorted(c.index for c in _chunks(device)) == [0, 1]
    assert server.chunks_served == total + 2


def test_unknown_tampered_and_silly_requests_are_refused(served):
    server, device, model, sha = served
    assert server.admit(ChunkRequest("dev-c", "e" * 64, chunk_size=1024)) == 0
    assert server.admit(ChunkRequest("dev-c", sha, chunk_size=10)) == 0  # below the minimum chunk size
    # dev-d is not addressed by the job (device:dev-c): refused, although the artifact is known
    assert server.admit(ChunkRequest("dev-d", sha, chunk_size=1024)) == 0
    with open(model, "ab") as fh:
        fh.write(b"tampered")
    assert server.admit(ChunkRequest("dev-c", sha, chunk_size=1024)) == 0
    assert server.refused == 4 and device.received == []
    # an unknown sha is in no job either; the tampered file no longer matches its sha256
    assert server.stats("dev-c").refused_by == {"not-addressed": 1, "chunk-size": 1, "unknown": 1}
    assert server.stats("dev-d").refused_by == {"not-addressed": 1}
