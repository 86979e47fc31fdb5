"""A stream of hostile payloads of every class on the results, status and events topics of a real
mosquitto, then a valid record: the collector is still running, the valid record is stored, and
every hostile payload is accounted for (a dead letter, or stored when the mutation left it valid)."""

from __future__ import annotations

import random
import time

import pytest

from collector.config import BrokerSettings, CollectorConfig
from collector.ingest.ingestor import Ingestor
from collector.messages.parse import parse
from testkit import hostile as h
from testkit.mqtt_peer import Peer, db_count, wait_for
from testkit.records import make_record
from wire import topics
from wire.schema import new_id


def _subscribed(topic: str) -> bool:
    parts = topic.split("/")
    return len(parts) == 5 and parts[:3] == ["edgebench", "v1", "devices"] and parts[4] in h.MESSAGE_LEAVES


def _stream(seed: int, n: int) -> list[h.Hostile]:
    """n hostile messages, every mutation and random bytes on every subscribed leaf at least once."""
    rnd = random.Random(seed)
    out = [h.mutated(leaf, m, rnd) for leaf in h.MESSAGE_LEAVES for m in h.MUTATIONS]
    out += [h.random_bytes(leaf, rnd) for leaf in h.MESSAGE_LEAVES]
    out.append(h.Hostile(topics.status(h.DEVICE), b"", "empty-status", "bad-json"))
    while len(out) < n:
        msg = h.hostile(rnd, h.MESSAGE_LEAVES)
        if _subscribed(msg.topic):
            out.append(msg)
    return [m for m in out if _subscribed(m.topic)]


@pytest.fixture
def ingestor(fresh_mosquitto, db_path):
    """A broker of its own: hundreds of large hostile payloads in the shared broker's persistence would
    slow its save-after-every-change for every later test."""
    mosquitto = fresh_mosquitto
    config = CollectorConfig(
        db=str(db_path),
        client_id=f"hostile-{new_id()[:8]}",
        broker=BrokerSettings(host=mosquitto.host, port=mosquitto.port, mqtt_version=5),
        max_payload_bytes=h.MAX_BYTES,
    )
    ing = Ingestor(config).start()
    assert ing.wait_connected(10)
    time.sleep(0.3)  # SUBACK
    yield ing
    ing.stop()


def test_hostile_stream_then_a_valid_record(ingestor, fresh_mosquitto, db_path):
    mosquitto = fresh_mosquitto
    stream = _stream(seed=13, n=300)
    expected = [parse(m.topic, m.payload, h.MAX_BYTES) for m in stream]
    dead = sum(p.kind == "dead" for p in expected)
    assert dead >= len(h.MUTATIONS)  # most are dead letters; a few mutations leave a message valid
    peer = Peer(mosquitto.port, f"hostile-peer-{new_id()[:8]}")
    try:
        for m in stream:
            peer.publish(m.topic, m.payload)
        valid = make_record(h.DEVICE)
        peer.publish(topics.results(h.DEVICE), valid.to_json())
    finally:
        peer.close()
    found = "SELECT COUNT(*) FROM results WHERE result_id = ?"
    assert wait_for(lambda: db_count(db_path, found, (valid.result_id,)) == 1, 60)
    # + the empty retained messages the collector publishes to clear dead-lettered statuses (drops)
    s = ingestor.stats
    assert wait_for(lambda: s.committed == len(stream) + 1 + s.retained_cleared, 30)
    assert s.dropped >= s.retained_cleared  # and the empty status payloads of the stream itself
    assert ingestor._writer is not None and ingestor._writer.is_alive()
    assert ingestor._writer_error is None
    assert ingestor.stats.dead_letters == dead
    assert db_count(db_path, "SELECT COUNT(*) FROM dead_letters") == dead
    stored_results = sum(p.kind == "result" for p in expected) + 1
    assert db_count(db_path) == stored_results
    by_class: dict[str, int] = {}
    for p in expected:
        if p.kind == "dead":
            cls = p.reason.partition(":")[0]
            by_class[cls] = by_class.get(cls, 0) + 1
    assert dict(ingestor.stats.dead) == by_class


def test_a_poison_message_is_dead_lettered_and_the_rest_of_its_batch_stored(mosquitto, db_path, monkeypatch):
    """A message that makes the write raise something nobody foresaw (here: result_row, patched to fail
    for one result id) is quarantined as an internal-error dead letter; the service goes on."""
    import collector.store.sqlite as ingest

    poison, good = make_record(h.DEVICE), [make_record(h.DEVICE) for _ in range(5)]
    real = ingest.result_row

    def result_row(message, *args, **kw):
        if message.result_id == poison.result_id:
            raise RuntimeError("unforeseen")
        return real(message, *args, **kw)

    monkeypatch.setattr(ingest, "result_row", result_row)
    config = CollectorConfig(
        db=str(db_path),
        client_id=f"test-{new_id()[:8]}",
        broker=BrokerSettings(host=mosquitto.host, port=mosquitto.port),
    )
    ingestor = Ingestor(config).start()
    peer = Peer(mosquitto.port, f"peer-{new_id()[:8]}")
    try:
        assert ingestor.wait_connected(10)
        for record in (good[0], poison, *good[1:]):
            peer.publish(topics.results(h.DEVICE), record.to_json())
        assert wait_for(lambda: db_count(db_path) == 5, 20)
        assert wait_for(lambda: ingestor.stats.dead["internal-error"] == 1, 10)
        assert ingestor._writer is not None and ingestor._writer.is_alive()
        reason = "SELECT COUNT(*) FROM dead_letters WHERE reason LIKE 'internal-error: RuntimeError%'"
        assert db_count(db_path, reason) == 1
    finally:
        peer.close()
        ingestor.stop()
