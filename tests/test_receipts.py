"""End-to-end acknowledgement against a real mosquitto and a real collector (Ingestor on SQLite):
a device's result leaves its outbox only when the collector's receipt says it is committed."""

from __future__ import annotations

import json
import signal
import sqlite3
from dataclasses import replace

import pytest

from agent.delivery.outbox import MemoryOutbox, SqliteOutbox
from agent.delivery.transport import MqttTransport
from agent.service.config import BrokerSettings as AgentBroker
from collector.config import BrokerSettings, CollectorConfig
from collector.ingest.ingestor import Ingestor
from collector.ingest.receipts import MAX_KEYS_PER_RECEIPT, build_receipts
from collector.messages.parse import parse
from testkit.mqtt_peer import db_count, wait_for
from testkit.records import make_record
from wire import topics
from wire.receipts import event_key, key_for_payload, result_key
from wire.schema import JobEvent, Receipt, new_id, utc_now

DEVICE = "dev-r1"


def _collector(broker, db_path) -> Ingestor:
    config = CollectorConfig(
        db=str(db_path),
        client_id=f"test-{new_id()[:8]}",
        broker=BrokerSettings(host=broker.host, port=broker.port),
    )
    ing = Ingestor(config).start()
    assert ing.wait_connected(10)
    assert wait_for(lambda: ing.stats.subscribed, 10)
    return ing


def _transport(broker, outbox, **kw) -> MqttTransport:
    settings = AgentBroker(host=broker.host, port=broker.port, reconnect_min_s=0.2, reconnect_max_s=1.0)
    transport = MqttTransport(
        settings,
        f"agent-{new_id()[:8]}",
        outbox=outbox,
        receipt_topic=kw.pop("receipt_topic", topics.receipts(DEVICE)),
        confirm_timeout_s=kw.pop("confirm_timeout_s", 0.5),
        confirm_timeout_max_s=2.0,
        **kw,
    )
    transport.start()
    assert transport.wait_connected(10)
    return transport


def _results(n: int) -> list[bytes]:
    return [make_record(DEVICE).to_json().encode() for _ in range(n)]


def _report(name: str, produced: int, db_path) -> None:
    stored = db_count(db_path)
    unique = db_count(db_path, "SELECT COUNT(DISTINCT result_id) FROM results")
    print(f"{name}: produced {produced} / stored unique {unique} / lost {produced - unique} / "
          f"duplicated {stored - unique}")  # fmt: skip
    assert unique == produced and stored == unique


def test_rows_leave_the_outbox_only_on_the_collectors_receipt(mosquitto, db_path, tmp_path):
    outbox = SqliteOutbox(tmp_path / "outbox.db")
    collector = _collector(mosquitto, db_path)
    transport = _transport(mosquitto, outbox)
    try:
        for payload in _results(50):
            transport.enqueue(topics.results(DEVICE), payload)
        assert transport.flush(20)  # empty = every row confirmed by a receipt
        assert outbox.stats().acked == 50 and transport.receipts >= 1
        _report("receipts, collector up", 50, db_path)
    finally:
        transport.stop()
        collector.stop()
        outbox.close()


def test_without_a_collector_rows_stay_are_resent_then_confirmed(fresh_mosquitto, db_path, tmp_path):
    """PUBACKed with nobody subscribed (0x10) or by a broker whose collector is away: not delivered."""
    outbox = SqliteOutbox(tmp_path / "outbox.db")
    transport = _transport(fresh_mosquitto, outbox)
    collector = None
    try:
        for payload in _results(20):
            transport.enqueue(topics.results(DEVICE), payload)
        assert wait_for(lambda: transport.resent >= 20, 15)  # sent again after the timeout
        assert outbox.stats().pending == 20
        collector = _collector(fresh_mosquitto, db_path)
        assert transport.flush(20)
        assert outbox.stats().pending == 0
        _report("receipts, collector late", 20, db_path)
    finally:
        transport.stop()
        if collector is not None:
            collector.stop()
        outbox.close()


def test_a_dead_letter_comes_back_as_rejected_and_is_set_aside(mosquitto, db_path):
    outbox = MemoryOutbox()
    collector = _collector(mosquitto, db_path)
    transport = _transport(mosquitto, outbox)
    try:
        good = json.loads(make_record(DEVICE).to_json())
        bad = {**good, "status": "exploded"}  # not a status: a dead letter, but its key is readable
        transport.enqueue(topics.results(DEVICE), json.dumps(bad).encode())
        assert wait_for(lambda: outbox.stats().rejected == 1, 15)
        stats = outbox.stats()
        assert stats.pending == 0 and "invalid-field" in stats.last_reject_reason
        assert any("refused r:" in e for e in transport.errors)
    finally:
        transport.stop()
        collector.stop()


def test_an_agent_without_receipts_is_still_served(mosquitto, db_path):
    outbox = MemoryOutbox()
    collector = _collector(mosquitto, db_path)
    transport = _transport(mosquitto, outbox, receipt_topic=None)
    try:
        for payload in _results(10):
            transport.enqueue(topics.results(DEVICE), payload)
        assert transport.flush(15)  # left on the PUBACK, as before receipts
        assert wait_for(lambda: db_count(db_path) == 10, 10)
    finally:
        transport.stop()
        collector.stop()


def test_delivery_keys_agree_on_both_sides():
    record = make_record(DEVICE)
    payload = record.to_json().encode()
    event = JobEvent(new_id(), DEVICE, "done", utc_now(), result_ids=(record.result_id,))
    event_payload = event.to_json().encode()
    assert key_for_payload(topics.results(DEVICE), payload) == result_key(record.result_id)
    assert key_for_payload(topics.events(DEVICE), event_payload) == event_key(event.job_id, "done", event.at)
    assert key_for_payload(topics.status(DEVICE), payload) is None
    parsed = [
        parse(topics.results(DEVICE), payload, 10**6),
        parse(topics.events(DEVICE), event_payload, 10**6),
    ]
    [(topic, body)] = build_receipts(
        parsed, [topics.results(DEVICE), topics.events(DEVICE)], [payload, event_payload]
    )
    receipt = Receipt.from_json(body)
    assert topic == topics.receipts(DEVICE)
    assert receipt.committed == (result_key(record.result_id), event_key(event.job_id, "done", event.at))


def test_receipts_are_split_and_addressed_per_device():
    records = [make_record(f"dev-{i % 2}") for i in range(MAX_KEYS_PER_RECEIPT + 5)]
    payloads = [r.to_json().encode() for r in records]
    topics_ = [topics.results(r.device.device_id) for r in records]
    parsed = [parse(t, p, 10**6) for t, p in zip(topics_, payloads, strict=True)]
    out = build_receipts(parsed, topics_, payloads)
    by_device: dict[str, int] = {}
    for topic, body in out:
        receipt = Receipt.from_json(body)
        assert topic == topics.receipts(receipt.device_id)
        assert len(receipt.committed) <= MAX_KEYS_PER_RECEIPT
        by_device[receipt.device_id] = by_device.get(receipt.device_id, 0) + len(receipt.committed)
    assert sum(by_device.values()) == len(records) and len(by_device) == 2


def test_an_outbox_from_before_receipts_is_migrated(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
        " payload BLOB NOT NULL, qos INTEGER NOT NULL DEFAULT 1, retain INTEGER NOT NULL DEFAULT 0,"
        " created_at TEXT NOT NULL DEFAULT '');"
        "INSERT INTO outbox (topic, payload) VALUES ('edgebench/v1/devices/d/results', x'7b7d');"
    )
    db.commit()
    db.close()
    outbox = SqliteOutbox(path)
    [row] = outbox.pending()
    assert row.key is None  # an old row leaves on the PUBACK, as it was promised
    assert outbox.stats().pending == 1 and outbox.stats().unconfirmed == 0
    outbox.close()


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_outbox_confirm_and_reject_by_key(tmp_path, kind):
    outbox = SqliteOutbox(tmp_path / "o.db") if kind == "sqlite" else MemoryOutbox()
    ids = [outbox.put("edgebench/v1/devices/d/results", b"x", key=f"r:{i}") for i in range(5)]
    plain = outbox.put("edgebench/v1/devices/d/status", b"y")
    assert outbox.mark_sent(ids[0]) and outbox.stats().unconfirmed == 1
    assert sorted(outbox.confirm(["r:0", "r:1", "r:nope"])) == ids[:2]
    assert outbox.reject_keys([("r:2", "invalid-field: latency")]) == [ids[2]]
    stats = outbox.stats()
    assert (stats.pending, stats.acked, stats.rejected, stats.unconfirmed) == (3, 2, 1, 0)
    assert [r.id for r in outbox.rows([ids[3], plain, 999])] == [ids[3], plain]
    assert replace(outbox.rows([ids[4]])[0]).key == "r:4"
    outbox.close()


def test_status_says_not_subscribed_while_the_broker_is_away(fresh_mosquitto, db_path):
    from collector.ingest.health import collector_health, format_health

    collector = _collector(fresh_mosquitto, db_path)
    try:
        assert wait_for(lambda: collector_health(str(db_path)).running, 10)
        fresh_mosquitto.stop(signal.SIGKILL)
        assert wait_for(lambda: collector_health(str(db_path)).not_subscribed, 10)
        text = format_health(collector_health(str(db_path)))
        assert "NOT SUBSCRIBED" in text and "disconnected" in text
        fresh_mosquitto.start()
        # back and subscribed again within the 2 s reconnect bound (plus the broker's start)
        assert wait_for(lambda: collector.stats.subscribed, 10)
        assert wait_for(lambda: not collector_health(str(db_path)).not_subscribed, 5)
    finally:
        collector.stop()


def test_resend_schedule_doubles_up_to_the_maximum_and_skips_rows_in_flight():
    from agent.delivery.resend import ResendSchedule

    now = [100.0]
    schedule = ResendSchedule(2.0, 10.0, clock=lambda: now[0])
    assert [schedule.sent(7) for _ in range(5)] == [2.0, 4.0, 8.0, 10.0, 10.0]
    schedule.sent(3)  # first send: due in 2 s
    assert schedule.due(10) == []
    now[0] += 2.0
    assert schedule.due(10) == [3]
    assert schedule.due(10, flying={3}) == []
    now[0] += 8.0
    assert schedule.due(10) == [3, 7] and schedule.due(1) == [3]
    schedule.discard([3, 7, 99])
    assert len(schedule) == 0 and schedule.due(10) == []
