"""A paho client with a cheaper receive path and batched acknowledgements, for the collector.

paho 2.x reads each packet with several tiny ``recv()`` calls (1 byte of command, 1 byte per
remaining-length byte, then the body) and goes through ``select()`` once per packet. At tens of
thousands of messages a second those syscalls are a large share of the network thread's time.
:class:`FastClient` wraps the socket in :class:`BufferedSocket` (one ``recv(64 KiB)`` serves many
packets; ``pending()`` tells paho's loop that buffered bytes are waiting, exactly like the bytes an
SSL socket holds) and reads the packets already buffered in one go.

:func:`ack_batch` acknowledges many QoS 1 messages with ONE queued write of concatenated PUBACK
packets instead of one queued packet, one wake-up byte and one ``send()`` per message. The bytes
are those ``Client.ack()`` would send (``0x40 0x02 <packet id>``, valid in MQTT 3.1.1 and 5, where
reason code "success" may be omitted).

Both use paho internals (``_create_socket``, ``_packet_queue``, ``_handle_publish`` and the
``_in_packet`` / ``_manual_ack`` / ``_protocol`` / ``_sock`` attributes). Hence paho-mqtt is pinned to
the tested range (pyproject.toml), tests/test_ingest_mqttfast.py checks exactly those internals (a
contract test that fails first on a paho that changed them), and they are enabled only when they exist
(:data:`FAST_PATH`). ``EDGEBENCH_PLAIN_PAHO=1`` turns the fast path off: the plain paho client and
``Client.ack`` per message, which CI runs the ingest tests with once too.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt

READ_CHUNK = 65536
BURST_PACKETS = 256  # packets read per loop iteration at most (acks and keepalive still interleave)
_PUBACK = 0x40

PLAIN_PAHO_ENV = "EDGEBENCH_PLAIN_PAHO"
INTERNALS = ("_create_socket", "_packet_queue", "_packet_read", "loop_read", "_handle_publish")
FAST_PATH = os.environ.get(PLAIN_PAHO_ENV, "") in ("", "0") and all(
    callable(getattr(mqtt.Client, name, None)) for name in INTERNALS
)


class BufferedSocket:
    """A socket whose ``recv`` serves small reads from one large read. Everything else is delegated."""

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            data = self._sock.recv(max(bufsize, READ_CHUNK))  # BlockingIOError / SSL errors propagate
            if len(data) <= bufsize:
                return data  # includes b"" (connection closed)
            self._buf, self._pos = data, bufsize
            return data[:bufsize]
        end = min(pos + bufsize, len(buf))
        self._pos = end
        if pos == 0 and end == len(buf):
            return buf
        return buf[pos:end]

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._buf) - self._pos + inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class FastClient(mqtt.Client):
    """``paho.mqtt.client.Client`` reading through a :class:`BufferedSocket` (see the module doc).

    With ``on_raw_message`` set, a QoS 1 PUBLISH without MQTT 5 properties in ``manual_ack`` mode is
    handed over as ``(topic, payload, mid, qos)`` straight from the packet, without building an
    ``MQTTMessage`` and its ``Properties`` and without the topic-filter dispatch. Every other packet
    (QoS 0 or 2, properties present, automatic acks) takes paho's path and ``on_message``.
    """

    on_raw_message: Callable[[str, bytes, int, int], None] | None = None

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        hook = self.on_raw_message
        packet = self._in_packet  # type: ignore[attr-defined]
        cmd = packet["command"]
        if hook is None or (cmd & 0x06) != 0x02 or not self._manual_ack:  # type: ignore[attr-defined]
            return super()._handle_publish()  # type: ignore[misc]
        data = bytes(packet["packet"])
        try:
            end = 2 + ((data[0] << 8) | data[1])
            mid = (data[end] << 8) | data[end + 1]
            pos = end + 2
            if self._protocol == mqtt.MQTTv5:  # type: ignore[attr-defined]
                if data[pos] != 0:  # properties present: paho decodes them
                    return super()._handle_publish()  # type: ignore[misc]
                pos += 1
        except IndexError:  # truncated: paho reports the malformed packet
            return super()._handle_publish()  # type: ignore[misc]
        hook(data[2:end].decode("utf-8", "replace"), data[pos:], mid, 1)
        return mqtt.MQTT_ERR_SUCCESS

    def _create_socket(self) -> Any:  # type: ignore[override]
        return BufferedSocket(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        n = 1
        sock = self._sock
        while rc == mqtt.MQTT_ERR_SUCCESS and n < BURST_PACKETS and sock is not None:
            if not isinstance(sock, BufferedSocket) or sock.pending() <= 0 or self._sock is not sock:
                break
            rc = super().loop_read(1)
            n += 1
        return rc


def ack_batch(client: mqtt.Client, acks: Iterable[tuple[int, int]]) -> None:
    """Acknowledge ``(mid, qos)`` pairs: QoS 1 in one write when possible, QoS 2 (and 0) via ``ack()``."""
    if not getattr(client, "_manual_ack", True):
        return  # paho acknowledged on receipt already
    mids = []
    for mid, qos in acks:
        if qos == 1 and FAST_PATH:
            mids.append(mid)
        elif qos:
            client.ack(mid, qos)
    if not mids:
        return
    packet = b"".join(struct.pack("!BBH", _PUBACK, 2, mid) for mid in mids)
    client._packet_queue(_PUBACK, packet, 0, 0)  # type: ignore[attr-defined]
