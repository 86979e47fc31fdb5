"""The agent's MQTT link: one paho client (made by :mod:`mqttlink.client`), the outbox pump, receipts.

* The paho settings (v5 persistent session or 3.1.1 ``clean_session=False``, TLS, auth, reconnect
  backoff, no paho queue) are the collector's too: :mod:`mqttlink.client`. On 3.1.1 nothing is lost
  either, but a broker refusal (ACL, size) is invisible there, as 3.1.1 has no reason codes.
* ``connect_async`` + ``loop_start``: the agent starts while the broker is down and reconnects with
  exponential backoff.
* Last will: the caller's offline :class:`~wire.schema.DeviceStatus`, QoS 1, retained.
* Payload size limit enforced here (``max_payload_kb``, lowered to the broker's Maximum Packet Size
  from CONNACK when it announces one): an oversized message raises :class:`PayloadTooLarge`.
* What happens to each outbox row (in order, ``inflight`` at a time, PUBACK, receipt, resend): the
  outbox pump, :mod:`agent.delivery.pump`. Subscriptions are re-sent on every (re)connect.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from agent.delivery.errors import PayloadTooLarge, PublishError, TransportError, describe
from agent.delivery.outbox import Outbox
from agent.delivery.pump import Delivery, OutboxPump
from agent.delivery.settings import AgentBrokerSettings
from mqttlink.client import connect_kwargs, make_client
from wire.receipts import key_for_payload

log = logging.getLogger("edgebench.agent.transport")

__all__ = ["Delivery", "MqttTransport", "PayloadTooLarge", "PublishError", "TransportError", "describe"]

MessageHandler = Callable[[str, bytes], None]
_DIRECT_INFLIGHT = 20  # paho's in-flight window beyond the outbox's: status, chunk requests


class MqttTransport:
    def __init__(
        self,
        settings: AgentBrokerSettings,
        client_id: str,
        *,
        outbox: Outbox | None = None,
        inflight: int = 100,
        will: tuple[str, bytes] | None = None,
        on_message: MessageHandler | None = None,
        on_connected: Callable[[], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        receipt_topic: str | None = None,
        confirm_timeout_s: float = 30.0,
        confirm_timeout_max_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        self.client_id = client_id
        self.outbox = outbox
        self.receipt_topic = receipt_topic
        self.on_message = on_message
        self.on_connected = on_connected
        self.on_error = on_error
        self.connected = threading.Event()
        self.ready = threading.Event()  # connected and the subscriptions acknowledged (SUBACK)
        self._sub_mid: int | None = None
        self.errors: deque[str] = deque(maxlen=100)
        self.connects = 0
        self._subscriptions: dict[str, int] = {}
        inflight = max(1, inflight)
        self._client = make_client(
            settings,
            client_id,
            persistent=True,
            manual_ack=False,
            max_inflight=inflight + _DIRECT_INFLIGHT,
            will=will,
        )
        self._pump = OutboxPump(
            outbox,
            self._client.publish,
            connected=self.connected,
            max_payload_bytes=settings.max_payload_kb * 1024,
            inflight=inflight,
            receipts=receipt_topic is not None,
            confirm_timeout_s=confirm_timeout_s,
            confirm_timeout_max_s=confirm_timeout_max_s,
            clock=clock,
            on_error=self._error,
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe

    # ------------------------------------------------------------------ counters (the pump's)
    @property
    def max_payload_bytes(self) -> int:
        return self._pump.max_payload_bytes

    @property
    def inflight(self) -> int:
        return self._pump.inflight

    @property
    def receipts(self) -> int:
        """Receipts applied to the outbox."""
        return self._pump.receipts

    @property
    def resent(self) -> int:
        """Rows sent again (no receipt in time, or nobody received them)."""
        return self._pump.resent

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Connect in the background (works while the broker is down) and start the outbox pump."""
        self._client.connect_async(**connect_kwargs(self.settings, persistent=True))
        if self.receipt_topic is not None:
            self._subscriptions[self.receipt_topic] = 1
        self._client.loop_start()
        self._pump.start()

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait until connected and subscribed (SUBACK received)."""
        return self.ready.wait(timeout_s)

    def stop(self, flush_timeout_s: float = 0.0) -> bool:
        """Flush the outbox for up to ``flush_timeout_s``, disconnect, stop threads. True if all flushed."""
        flushed = self.flush(flush_timeout_s) if flush_timeout_s > 0 else self.pending_count() == 0
        self._pump.stop()
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()
        self.ready.clear()
        return flushed

    def kill(self) -> None:
        """Drop the connection without a DISCONNECT (the broker publishes the will). For tests."""
        self._pump.stop(wait=False)
        sock = self._client.socket()
        if sock is not None:
            sock.close()
        self._client.loop_stop()

    # ------------------------------------------------------------------ subscribe / publish
    def subscribe(self, topics: Iterable[str], qos: int = 1) -> None:
        """Remembered and re-sent on every (re)connect."""
        for topic in topics:
            self._subscriptions[topic] = qos
        if self.connected.is_set():
            self._subscribe_all(self._client)

    def _subscribe_all(self, client: mqtt.Client) -> None:
        if not self._subscriptions:
            self.ready.set()
            return
        _rc, mid = client.subscribe([(t, q) for t, q in self._subscriptions.items()])
        self._sub_mid = mid

    def check_size(self, topic: str, payload: bytes) -> None:
        if len(payload) > self.max_payload_bytes:
            raise PayloadTooLarge(
                f"message for {topic} is {len(payload)} bytes, "
                f"over the device's limit of {self.max_payload_bytes} bytes"
            )

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> Delivery:
        """Direct publish (not stored): status, chunk requests. Raises PayloadTooLarge."""
        self.check_size(topic, payload)
        delivery = Delivery(topic)
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise TransportError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        self._pump.track(info.mid, delivery)  # QoS 0 completes at once (paho calls on_publish on send)
        return delivery

    def enqueue(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, *, key: str | None = None
    ) -> int:
        """Store in the outbox first (durable), then let the pump send it. Returns the row id.

        ``key``: the message's delivery key (:mod:`wire.receipts`) when the caller knows it; None: read
        from the payload of a result or job event (its one extra parse)."""
        if self.outbox is None:
            raise TransportError("this transport has no outbox")
        self.check_size(topic, payload)
        if self.receipt_topic is None:
            key = None  # without receipts every row leaves on its PUBACK
        elif key is None:
            key = key_for_payload(topic, payload)
        row_id = self.outbox.put(topic, payload, qos=qos, retain=retain, key=key)
        self._pump.wake()
        return row_id

    def pending_count(self) -> int:
        return self._pump.pending_count()

    def unconfirmed_count(self) -> int:
        """Rows sent (PUBACKed) that wait for the collector's receipt."""
        return self._pump.unconfirmed_count()

    def flush(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty, up to ``timeout_s``: every row confirmed by the collector
        (with receipts) or PUBACKed (without), or set aside."""
        return self._pump.flush(timeout_s)

    def handle_receipt(self, payload: bytes) -> None:
        """The collector committed (or dead-lettered) these messages: they leave the outbox."""
        self._pump.handle_receipt(payload)

    def _error(self, message: str) -> None:
        log.error("%s", message)
        self.errors.append(message)
        if self.on_error is not None:
            self.on_error(message)

    # ------------------------------------------------------------------ paho callbacks (network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._error(f"broker refused connection: {describe(reason_code)}")
            return
        limit = getattr(properties, "MaximumPacketSize", None) if properties is not None else None
        if limit:
            self._pump.max_payload_bytes = min(self.settings.max_payload_kb * 1024, int(limit) - 1024)
        self.connects += 1
        self._subscribe_all(client)
        present = bool(getattr(flags, "session_present", False))  # paho's ConnectFlags, not its repr
        log.info("connected to %s:%s (session present: %s)", self.settings.host, self.settings.port, present)
        self.connected.set()
        self._pump.wake()
        if self.on_connected is not None:
            self.on_connected()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        for topic, code in zip(self._subscriptions, reason_codes, strict=False):
            if code.is_failure:
                self._error(f"broker refused subscription to {topic}: {describe(code)}")
        if mid == self._sub_mid:
            self.ready.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        self.ready.clear()
        if not self._pump.stopping:
            log.warning("disconnected from broker: %s", reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._pump.on_publish(mid, reason_code)

    def _on_message(self, client, userdata, message) -> None:
        if self.receipt_topic is not None and message.topic == self.receipt_topic:
            self.handle_receipt(message.payload)
            return
        if self.on_message is None:
            return
        try:
            self.on_message(message.topic, message.payload)
        except Exception as exc:  # a bad message must not kill the network thread
            self._error(f"handling message on {message.topic}: {exc!r}")
