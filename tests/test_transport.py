"""The transport against a real mosquitto: outbox delivery across outages, will, size limit, ACL codes."""

from __future__ import annotations

import subprocess
from dataclasses import replace

import pytest

from agent.delivery.outbox import MemoryOutbox, OutboxError, SqliteOutbox
from agent.delivery.settings import AgentBrokerSettings as BrokerSettings
from agent.delivery.transport import MqttTransport, PayloadTooLarge, PublishError
from edgebench.broker import MosquittoBroker, free_port
from testkit.fleet_peer import RawSubscriber, wait_until

TOPIC = "edgebench/v1/devices/dev1/results"


def settings_for(broker: MosquittoBroker, **kw) -> BrokerSettings:
    base = BrokerSettings(host=broker.host, port=broker.port, reconnect_min_s=0.2, reconnect_max_s=1.0)
    return replace(base, **kw)


@pytest.fixture(params=["sqlite", "memory"])
def outbox(request, tmp_path):
    box = SqliteOutbox(tmp_path / "outbox.db") if request.param == "sqlite" else MemoryOutbox()
    yield box
    box.close()


def start_transport(broker, outbox, **kw) -> MqttTransport:
    transport = MqttTransport(settings_for(broker, **kw), "agent-dev1", outbox=outbox, inflight=20)
    transport.start()
    return transport


def test_broker_down_at_start_then_everything_arrives(fresh_mosquitto, outbox):
    fresh_mosquitto.stop()
    transport = start_transport(fresh_mosquitto, outbox)
    try:
        for i in range(50):
            transport.enqueue(TOPIC, f"m{i}".encode())
        assert not transport.connected.is_set()
        assert outbox.stats().pending == 50
        fresh_mosquitto.start()
        sub = RawSubscriber(fresh_mosquitto.host, fresh_mosquitto.port, TOPIC).start()
        try:
            assert transport.wait_connected(15)
            assert transport.flush(20)
            assert wait_until(lambda: len(sub.payloads()) >= 50, 10)
            assert sub.payloads() == [f"m{i}".encode() for i in range(50)]  # in order
            assert outbox.stats().acked == 50
        finally:
            sub.stop()
    finally:
        transport.stop()


@pytest.mark.parametrize("mqtt_version", [5, 3])
def test_broker_restart_mid_stream_loses_nothing(fresh_mosquitto, tmp_path, mqtt_version):
    outbox = SqliteOutbox(tmp_path / "o.db")
    sub = RawSubscriber(fresh_mosquitto.host, fresh_mosquitto.port, TOPIC, client_id="sub-restart").start()
    transport = start_transport(fresh_mosquitto, outbox, mqtt_version=mqtt_version)
    try:
        assert transport.wait_connected(10)
        for i in range(300):
            transport.enqueue(TOPIC, f"r{i}".encode())
            if i == 100:
                fresh_mosquitto.stop()  # SIGTERM: persistence saved, sessions kept
            if i == 200:
                fresh_mosquitto.start()
        assert transport.flush(30)
        assert wait_until(lambda: len(set(sub.payloads())) >= 300, 20)
        assert set(sub.payloads()) == {f"r{i}".encode() for i in range(300)}
        assert outbox.stats().pending == 0 and outbox.stats().rejected == 0
        assert transport.connects >= 2
    finally:
        transport.stop()
        sub.stop()
        outbox.close()


def test_last_will_is_published_retained_when_connection_drops(fresh_mosquitto, outbox):
    status = "edgebench/v1/devices/dev1/status"
    transport = MqttTransport(
        settings_for(fresh_mosquitto, keepalive=5), "agent-dev1", outbox=outbox, will=(status, b"offline")
    )
    transport.start()
    assert transport.wait_connected(10)
    transport.kill()
    # a late subscriber still gets it: retained
    out = subprocess.run(
        ["mosquitto_sub", "-h", fresh_mosquitto.host, "-p", str(fresh_mosquitto.port), "-t", status,
         "-C", "1", "-W", "20"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert out.stdout.strip() == b"offline"


def test_oversized_message_refused_on_device(fresh_mosquitto, outbox):
    transport = start_transport(fresh_mosquitto, outbox, max_payload_kb=1)
    try:
        assert transport.wait_connected(10)
        with pytest.raises(PayloadTooLarge, match="over the device's limit of 1024 bytes"):
            transport.enqueue(TOPIC, b"x" * 2000)
        with pytest.raises(PayloadTooLarge):
            transport.publish(TOPIC, b"x" * 2000)
        assert outbox.stats().pending == 0
        outbox.max_payload_bytes = 1024
        with pytest.raises(OutboxError):
            outbox.put(TOPIC, b"x" * 2000)
    finally:
        transport.stop()


@pytest.fixture
def acl_broker(tmp_path):
    """A broker with passwords and an ACL: each device may write only below its own topics."""
    work = tmp_path / "acl-broker"
    work.mkdir()
    passwd = work / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "dev1", "secret"], check=True, timeout=30)
    acl = work / "acl"
    acl.write_text("pattern write edgebench/v1/devices/%u/#\npattern read edgebench/v1/devices/%u/jobs\n")
    broker = MosquittoBroker(
        workdir=work,
        port=free_port(),
        allow_anonymous=False,
        extra_config=[f"password_file {passwd}", f"acl_file {acl}"],
    ).start()
    yield broker
    broker.stop()


def test_acl_denied_publish_is_an_error_with_reason_code(acl_broker, tmp_path):
    outbox = SqliteOutbox(tmp_path / "o.db")
    transport = start_transport(acl_broker, outbox, username="dev1", password="secret")
    try:
        assert transport.wait_connected(10)
        transport.publish(TOPIC, b"allowed").wait(10)  # own topic: fine
        with pytest.raises(PublishError, match=r"Not authorized \(0x87\)") as caught:
            transport.publish("edgebench/v1/devices/dev2/results", b"not mine").wait(10)
        assert caught.value.code == 0x87
        # through the outbox: the row is set aside with the reason, counted, and reported as an error
        transport.enqueue("edgebench/v1/devices/dev2/results", b"denied row")
        transport.enqueue(TOPIC, b"fine row")
        assert wait_until(lambda: outbox.stats().rejected == 1, 10)
        # nobody subscribes here: PUBACK 0x10 "No matching subscribers" is not a delivery, the row stays
        assert not transport.flush(1)
        stats = outbox.stats()
        assert (stats.rejected, stats.acked, stats.pending) == (1, 0, 1)
        assert "0x87" in stats.last_reject_reason
        assert any("0x87" in e and "dev2" in e for e in transport.errors)
    finally:
        transport.stop()
        outbox.close()


def test_bad_password_is_reported(acl_broker, outbox):
    transport = start_transport(acl_broker, outbox, username="dev1", password="wrong")
    try:
        assert wait_until(lambda: any("refused connection" in e for e in transport.errors), 10)
        assert not transport.connected.is_set()
    finally:
        transport.stop()


def test_enqueue_stores_the_callers_key_or_reads_it_from_the_payload(tmp_path):
    box = MemoryOutbox()
    settings = BrokerSettings(port=free_port())  # never started: enqueue needs no broker
    transport = MqttTransport(
        settings, "agent-dev1", outbox=box, receipt_topic="edgebench/v1/devices/dev1/receipts"
    )
    transport.enqueue(TOPIC, b"not json", key="r:given")
    transport.enqueue(TOPIC, b'{"result_id": "r2"}')
    without = MqttTransport(settings, "agent-dev2", outbox=MemoryOutbox())  # no receipts: rows have no key
    without.enqueue(TOPIC, b"x", key="r:ignored")
    assert [r.key for r in box.pending()] == ["r:given", "r:r2"]
    assert [r.key for r in without.outbox.pending()] == [None]
