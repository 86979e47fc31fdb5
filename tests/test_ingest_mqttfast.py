"""collector.mqtt.fast against real sockets and a real mosquitto: buffered reads, the raw QoS 1 hook
(and paho's path for everything else), batched PUBACKs that really acknowledge."""

from __future__ import annotations

import inspect
import socket
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.mqtt.fast import (
    FAST_PATH,
    INTERNALS,
    PLAIN_PAHO_ENV,
    BufferedSocket,
    FastClient,
    ack_batch,
)
from testkit.mqtt_peer import Peer, wait_for
from wire.schema import new_id


def test_buffered_socket_serves_small_reads_from_one_recv():
    a, b = socket.socketpair()
    try:
        a.sendall(b"\x30\x05hello\x40\x02\x00\x07")
        time.sleep(0.05)
        sock = BufferedSocket(b)
        assert sock.recv(1) == b"\x30"
        assert sock.pending() == 10  # buffered: paho's loop must not wait in select()
        assert sock.recv(1) == b"\x05"
        assert sock.recv(5) == b"hello"
        assert sock.recv(4096) == b"\x40\x02\x00\x07"  # never more than what is buffered
        assert sock.pending() == 0
        assert sock.fileno() == b.fileno()  # everything else is the real socket
        b.setblocking(False)
        try:
            sock.recv(1)
            raise AssertionError("expected BlockingIOError")
        except BlockingIOError:
            pass
        a.close()
        assert sock.recv(1) == b""  # closed
    finally:
        b.close()


def _client(port: int, cid: str) -> FastClient:
    c = FastClient(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5, manual_ack=True)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 300
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    return c


def test_paho_internals_the_fast_path_relies_on():
    """The contract with paho-mqtt (pinned to >=2.2,<2.3): exactly what collector/mqtt/fast.py uses."""
    for name in INTERNALS:
        assert callable(getattr(mqtt.Client, name)), name
    params = list(inspect.signature(mqtt.Client._packet_queue).parameters)
    assert params[:5] == ["self", "command", "packet", "mid", "qos"]
    assert list(inspect.signature(mqtt.Client._handle_publish).parameters) == ["self"]
    assert list(inspect.signature(mqtt.Client._create_socket).parameters) == ["self"]
    assert "max_packets" in inspect.signature(mqtt.Client.loop_read).parameters
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    for attr in ("_in_packet", "_manual_ack", "_protocol", "_sock"):
        assert hasattr(client, attr), attr
    assert {"command", "packet"} <= set(client._in_packet)
    assert client._manual_ack is True and client._protocol == mqtt.MQTTv5
    # the PUBACK bytes ack_batch writes are those of paho's own _send_puback (MQTT 3.1.1 and 5)
    assert "_send_puback" in dir(mqtt.Client)


@pytest.mark.skipif(not FAST_PATH, reason=f"fast path off ({PLAIN_PAHO_ENV})")
def test_raw_hook_paho_path_and_batched_acks(mosquitto):
    cid, topic = f"fast-{new_id()[:8]}", f"edgebench/test/{new_id()[:8]}"
    raw: list[tuple[str, bytes, int, int]] = []
    paho_path: list[tuple[str, bytes, int]] = []
    lock = threading.Lock()

    def on_raw(t: str, payload: bytes, mid: int, qos: int) -> None:
        with lock:
            raw.append((t, payload, mid, qos))

    def on_message(_c, _u, m) -> None:
        with lock:
            paho_path.append((m.topic, m.payload, m.qos))

    c = _client(mosquitto.port, cid)
    c.on_raw_message = on_raw
    c.on_message = on_message
    c.loop_start()
    c.subscribe(topic, 1)
    time.sleep(0.3)
    peer = Peer(mosquitto.port, f"peer-{new_id()[:8]}")
    try:
        for i in range(300):
            peer.publish(topic, f"m{i}".encode() * 50)
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = ("k", "v")
        peer.client.publish(topic, b"with-props", qos=1, properties=props)
        peer.publish(topic, b"qos0", qos=0)
        assert wait_for(lambda: len(raw) == 300 and len(paho_path) == 2, 15)
        assert [p for _, p, _, _ in raw] == [f"m{i}".encode() * 50 for i in range(300)]
        assert all(t == topic and q == 1 and isinstance(p, bytes) for t, p, _, q in raw)
        assert sorted(p for _, p, _ in paho_path) == [b"qos0", b"with-props"]
        # Acknowledge all but the last 10 raw ones (one write), and the one with properties via ack().
        ack_batch(c, [(mid, 1) for _, _, mid, _ in raw[:-10]])
        # A round trip after the acks: the broker reads a connection's packets in order, so once our
        # own QoS 1 publish is acknowledged every PUBACK before it has been processed.
        info = c.publish(f"{topic}/sync", b"", qos=1)
        info.wait_for_publish(timeout=30)  # the shared broker saves after every change: can be slow
        assert info.is_published()
    finally:
        c.disconnect()
        c.loop_stop()
    # Same session again: exactly the 10 unacknowledged QoS 1 messages (and the one with properties,
    # never acked) come back.
    again: list[bytes] = []
    c2 = _client(mosquitto.port, cid)
    c2.on_raw_message = lambda t, p, mid, q: again.append(p)
    c2.on_message = lambda _c, _u, m: again.append(m.payload)
    c2.loop_start()
    try:
        assert wait_for(lambda: len(again) >= 11, 10)
        time.sleep(0.5)
        assert sorted(again) == sorted([p for _, p, _, _ in raw[-10:]] + [b"with-props"])
    finally:
        c2.disconnect()
        c2.loop_stop()
        peer.close()
