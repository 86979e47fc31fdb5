"""The local brokers the tests and the demo start: real processes, stopped by PID."""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt
import pytest

from edgebench.broker import BrokerError, EmbeddedBroker, MosquittoBroker, start_local_broker


def _round_trip(host: str, port: int, version: int) -> list[bytes]:
    proto = mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311
    got: list[bytes] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-sub", protocol=proto)
    sub.on_message = lambda c, u, m: got.append(m.payload)
    sub.connect(host, port)
    sub.subscribe("t/#", qos=1)
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-pub", protocol=proto)
    pub.connect(host, port)
    pub.loop_start()
    time.sleep(0.3)
    for i in range(20):
        pub.publish("t/x", f"m{i}".encode(), qos=1).wait_for_publish(5)
    deadline = time.monotonic() + 10
    while len(got) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    for c in (sub, pub):
        c.loop_stop()
        c.disconnect()
    return got


def test_mosquitto_starts_serves_and_stops(tmp_path):
    broker = MosquittoBroker(workdir=tmp_path).start()
    pid = broker.process.pid
    assert broker.running
    assert _round_trip(broker.host, broker.port, 5) == [f"m{i}".encode() for i in range(20)]
    broker.stop()
    assert not broker.running
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)


def test_embedded_broker_speaks_311(tmp_path):
    pytest.importorskip("amqtt", reason="amqtt is the demo's fallback broker (edgebench[demo])")
    with EmbeddedBroker(workdir=tmp_path) as broker:
        assert broker.mqtt_version == 3
        assert sorted(_round_trip(broker.host, broker.port, 3)) == sorted(f"m{i}".encode() for i in range(20))
    assert broker.process is None


def test_unknown_broker_choice(tmp_path):
    with pytest.raises(BrokerError, match="unknown broker choice"):
        start_local_broker(tmp_path, prefer="rabbit")
