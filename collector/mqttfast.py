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

Both use paho internals (``_create_socket``, ``_packet_queue``): they are enabled only when those
exist with the expected shape (:data:`FAST_PATH`), otherwise the plain paho behaviour is used.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as mqtt

READ_CHUNK = 65536
BURST_PACKETS = 256  # packets read per loop iteration at most (acks and keepalive still interleave)
_PUBACK = 0x40

FAST_PATH = all(
    callable(getattr(mqtt.Client, name, None))
    for name in ("_create_socket", "_packet_queue", "_packet_read", "loop_read")
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
        end = pos + bufsize
        self._pos = end
        if pos == 0 and end >= len(buf):
            return buf
        return buf[pos:end]

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._buf) - self._pos + inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class FastClient(mqtt.Client):
    """``paho.mqtt.client.Client`` reading through a :class:`BufferedSocket` (see the module doc)."""

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
