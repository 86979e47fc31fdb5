"""Collector ingest against a real mosquitto and real SQLite files: dead letters, device registry,
job events, MQTT 3.1.1 mode, the status command."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
from click.testing import CliRunner

from collector.config import BrokerSettings, CollectorConfig
from collector.ingest.health import collector_health
from collector.ingest.ingestor import Ingestor
from collector.messages.parse import parse
from collector.service.cli import collector_group
from testkit.mqtt_peer import Peer, db_count, wait_for
from testkit.records import make_record, make_status
from wire import topics
from wire.schema import JobEvent, new_id


def _config(broker, db_path, **kw) -> CollectorConfig:
    return CollectorConfig(
        db=str(db_path),
        client_id=f"test-{new_id()[:8]}",
        broker=BrokerSettings(host=broker.host, port=broker.port, mqtt_version=kw.pop("mqtt_version", 5)),
        **kw,
    )


@pytest.fixture
def ingestor(mosquitto, db_path):
    ing = Ingestor(_config(mosquitto, db_path, max_payload_bytes=8192)).start()
    assert ing.wait_connected(10)
    wait_for(lambda: ing.client.is_connected(), 5)
    import time

    time.sleep(0.3)  # SUBACK
    yield ing
    ing.stop()


@pytest.fixture
def peer(mosquitto):
    p = Peer(mosquitto.port, f"peer-{new_id()[:8]}")
    yield p
    p.close()


def test_every_dead_letter_class_is_stored_acked_and_counted(ingestor, peer, db_path):
    good = make_record("dev-1").to_dict()
    bad_version = {**good, "schema_version": 99}
    missing = {k: v for k, v in good.items() if k != "status"}
    mistyped = json.loads(json.dumps(good))
    mistyped["latency"]["p50_ms"] = "fast"
    oversize = {**good, "error": "x" * 10000}
    cases = [
        (topics.results("dev-1"), b"{not json", "bad-json"),
        (topics.results("dev-1"), b"\xff\xfe binary", "bad-json"),
        (topics.results("dev-1"), json.dumps(bad_version), "unknown-schema-version"),
        (topics.results("dev-1"), json.dumps(missing), "missing-field"),
        (topics.results("dev-1"), json.dumps(mistyped), "invalid-field"),
        (topics.results("dev-1"), json.dumps(oversize), "oversize"),
        (topics.results("dev-2"), json.dumps(good), "topic-mismatch"),
        (topics.events("dev-1"), JobEvent(new_id(), "dev-9", "running", "t").to_json(), "topic-mismatch"),
        ("edgebench/v1/devices/bad id/results", json.dumps(good), "unknown-topic"),
    ]
    for topic, payload, _ in cases:
        peer.publish(topic, payload)
    # The service keeps going: a valid record after all of that is stored.
    last = make_record("dev-1")
    peer.publish(topics.results("dev-1"), last.to_json())
    assert wait_for(lambda: db_count(db_path) == 1 and db_count(db_path, "SELECT COUNT(*) FROM dead_letters")
                    == len(cases), 60)  # fmt: skip
    # the counters are updated after the commit and the acks, a moment after the rows are visible
    assert wait_for(lambda: ingestor.stats.dead_letters == len(cases), 10)
    rows = ingestor.db.execute("SELECT topic, reason, excerpt FROM dead_letters ORDER BY id").fetchall()
    assert [r[1].partition(":")[0] for r in rows] == [c[2] for c in cases]
    assert "latency.p50_ms" in rows[4][1] and "status" in rows[3][1]
    assert all(len(r[2]) <= 600 for r in rows)  # bounded excerpts
    assert ingestor.stats.dead_letters == len(cases)
    assert ingestor.stats.dead["topic-mismatch"] == 2
    assert db_count(db_path, "SELECT COUNT(*) FROM results WHERE result_id = ?", (last.result_id,)) == 1


def test_devices_from_birth_heartbeat_and_last_will(ingestor, peer, db_path):
    try:
        _device_lifecycle(ingestor, peer, db_path)
    finally:
        peer.publish(topics.status("pi-a"), b"", retain=True)  # clear the retained message (empty payload)


def _device_lifecycle(ingestor, peer, db_path):
    peer.publish(
        topics.status("pi-a"), make_status("pi-a", at="2025-01-01T00:00:00.000Z").to_json(), retain=True
    )
    peer.publish(
        topics.status("pi-a"),
        replace(make_status("pi-a", at="2025-01-01T00:00:30.000Z", reason="heartbeat", facts=False),
                outbox_pending=3).to_json(),
    )  # fmt: skip
    assert wait_for(
        lambda: db_count(db_path, "SELECT outbox_pending FROM devices WHERE device_id='pi-a'") == 3
    )
    row = ingestor.db["devices"].get("pi-a")
    assert row["online"] == 1 and row["board"] == "test board" and row["last_reason"] == "heartbeat"
    will = make_status(
        "pi-a", state="offline", at="2025-01-01T00:01:00.000Z", reason="last-will", facts=False
    )
    peer.publish(topics.status("pi-a"), will.to_json())
    assert wait_for(lambda: db_count(db_path, "SELECT COUNT(*) FROM devices WHERE online = 0") == 1)
    assert ingestor.db["devices"].get("pi-a")["last_seen"] == "2025-01-01T00:01:00.000Z"


def test_job_events_redelivery_absorbed(ingestor, peer, db_path):
    job = new_id()
    event = JobEvent(job, "dev-1", "running", "2025-01-01T00:00:00.000Z", progress=0.5)
    for _ in range(3):
        peer.publish(topics.events("dev-1"), event.to_json())
    peer.publish(
        topics.events("dev-1"), replace(event, state="done", at="2025-01-01T00:00:09.000Z").to_json()
    )
    assert wait_for(lambda: ingestor.stats.events == 4)
    assert db_count(db_path, "SELECT COUNT(*) FROM job_events WHERE job_id = ?", (job,)) == 2


def test_mqtt311_persistent_session(fresh_mosquitto, db_path):
    config = _config(fresh_mosquitto, db_path, mqtt_version=3)
    ing = Ingestor(config).start()
    assert ing.wait_connected(10)
    import time

    time.sleep(0.3)
    ing.stop()  # offline now; the 3.1.1 session (clean_session=False) keeps our subscription
    peer = Peer(fresh_mosquitto.port, "peer311")
    sent = [make_record("dev-1") for _ in range(20)]
    for r in sent:
        peer.publish(topics.results("dev-1"), r.to_json())
    peer.close()
    ing = Ingestor(config).start()
    try:
        assert wait_for(lambda: db_count(db_path) == 20, 15)
    finally:
        ing.stop()


def test_parse_is_pure_and_total():
    rec = make_record("dev-1")
    assert parse(topics.results("dev-1"), rec.to_json().encode(), 1 << 20).message == rec
    assert parse("edgebench/v1/devices/dev-1/unknown", b"{}", 1 << 20).reason.startswith("unknown-topic")
    assert parse(topics.status("dev-1"), b"", 1 << 20).kind == "drop"  # a cleared retained status


def test_status_command(ingestor, peer, db_path):
    for _ in range(5):
        peer.publish(topics.results("dev-1"), make_record("dev-1").to_json())
    peer.publish(topics.status("dev-1"), make_status("dev-1").to_json())
    peer.publish(topics.results("dev-1"), b"nope")
    assert wait_for(lambda: db_count(db_path) == 5 and ingestor.stats.dead_letters == 1, 15)
    assert wait_for(lambda: int((collector_health(db_path).collector or {}).get("committed") or 0) >= 7, 10)
    health = collector_health(db_path)
    assert (health.results, health.devices_online, health.dead_letters) == (5, 1, 1)
    assert health.dead_by_class == {"bad-json": 1} and health.running
    out = CliRunner().invoke(collector_group, ["status", "--db", str(db_path)])
    assert out.exit_code == 0, out.output
    assert "results         5" in out.output and "(1 online)" in out.output and "bad-json 1" in out.output
    missing = CliRunner().invoke(collector_group, ["status", "--db", str(db_path) + ".nope"])
    assert missing.exit_code == 1 and "no database" in missing.output and "Traceback" not in missing.output


def test_retained_garbage_on_a_status_topic_is_dead_lettered_once(mosquitto, db_path):
    peer = Peer(mosquitto.port, f"peer-{new_id()[:8]}")
    topic = topics.status("pi-garbage")
    try:
        peer.publish(topic, b"\x00 not a status", retain=True)
        config = _config(mosquitto, db_path)
        for first in (True, False, False):  # every (re)start of the collector gets the retained ones
            ing = Ingestor(config).start()
            try:
                assert ing.wait_connected(10)
                if first:
                    assert wait_for(lambda ing=ing: ing.stats.retained_cleared == 1, 10)
                time.sleep(0.5)  # a retained message would arrive right after the SUBACK
            finally:
                ing.stop()
        assert db_count(db_path, "SELECT COUNT(*) FROM dead_letters WHERE topic = ?", (topic,)) == 1
    finally:
        peer.publish(topic, b"", retain=True)
        peer.close()
