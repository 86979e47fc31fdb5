"""Every paho-mqtt setting of the agent, in one place, and the outbox pump.

* paho >= 2, ``CallbackAPIVersion.VERSION2``.
* MQTT v5 (default): persistent session (``clean_start=False`` on every connect, including the
  first, and a Session Expiry Interval), reason codes on PUBACK. MQTT 3.1.1 (``mqtt_version = 3``):
  ``clean_session=False``; nothing is lost either, but a broker refusal (ACL, size) is invisible there,
  as 3.1.1 has no reason codes.
* ``connect_async`` + ``loop_start`` + ``reconnect_delay_set``: the agent starts while the broker is
  down and reconnects with exponential backoff.
* Last will: the caller's offline :class:`~wire.schema.DeviceStatus`, QoS 1, retained.
* Payload size limit enforced here (``max_payload_kb``, lowered to the broker's Maximum Packet Size
  from CONNACK when it announces one): an oversized message raises :class:`PayloadTooLarge`.
* Outbox pump: rows are published in id order, at most ``inflight`` awaiting PUBACK. A failure code
  (0x87 Not authorized, 0x97 Quota exceeded, ...) moves the row aside and is reported as an error.
  0x10 "No matching subscribers" means nobody received it (the collector is not subscribed, e.g. just
  after a broker restart): the row stays and is sent again later. After a reconnect paho re-sends the
  rows it still holds (older ones), then the pump continues with the rest, in order.
* End-to-end acknowledgement (``receipt_topic`` set): a PUBACK is one hop. A row with a delivery key
  (results, job events: :mod:`wire.receipts`) is only marked sent; it leaves the outbox when the
  collector's :class:`~wire.schema.Receipt` on ``receipt_topic`` lists its key as committed (or as a
  dead letter: set aside with the collector's reason). A sent row without a receipt is sent again
  after ``confirm_timeout_s``, doubling up to ``confirm_timeout_max_s``; every row is sent again after
  a restart. Duplicates are harmless: the collector's writes are idempotent and it confirms copies too.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.delivery.outbox import Outbox, OutboxError
from agent.delivery.resend import ResendSchedule
from agent.service.config import BrokerSettings
from wire.codec import SchemaError
from wire.errors import EdgebenchError
from wire.receipts import key_for_payload
from wire.schema import Receipt

log = logging.getLogger("edgebench.agent.transport")

__all__ = ["Delivery", "MqttTransport", "PayloadTooLarge", "PublishError", "TransportError", "describe"]


class TransportError(EdgebenchError):
    """The broker cannot be used: not connected in time, refused, or a publish failed."""


class PublishError(TransportError):
    """The broker answered a publish with a failure reason code (MQTT v5)."""

    def __init__(self, topic: str, reason: str, code: int):
        self.topic, self.reason, self.code = topic, reason, code
        super().__init__(f"broker refused publish to {topic}: {reason}")


class PayloadTooLarge(TransportError):
    """A message exceeds the device's payload limit (or the broker's Maximum Packet Size)."""


def describe(reason: ReasonCode | int) -> str:
    value = reason.value if isinstance(reason, ReasonCode) else int(reason)
    name = str(reason) if isinstance(reason, ReasonCode) else "error"
    return f"{name} (0x{value:02x})"


class Delivery:
    """Handle on one direct (non-outbox) publish: :meth:`wait` for the broker's answer."""

    def __init__(self, topic: str):
        self.topic = topic
        self._done = threading.Event()
        self.error: PublishError | None = None

    def _finish(self, reason: ReasonCode | None) -> None:
        if reason is not None and reason.is_failure:
            self.error = PublishError(self.topic, describe(reason), reason.value)
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout_s: float) -> None:
        """Raise PublishError if refused, TransportError if unanswered within ``timeout_s``."""
        if not self._done.wait(timeout_s):
            raise TransportError(f"no acknowledgement for {self.topic} within {timeout_s:g} s")
        if self.error is not None:
            raise self.error


@dataclass
class _Row:
    row_id: int
    topic: str
    key: str | None = None


NO_MATCHING_SUBSCRIBERS = 0x10


MessageHandler = Callable[[str, bytes], None]


class MqttTransport:
    def __init__(
        self,
        settings: BrokerSettings,
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
        self.receipt_topic = receipt_topic
        # sent rows waiting for a receipt (or sent again after "no matching subscribers")
        self._awaiting = ResendSchedule(confirm_timeout_s, confirm_timeout_max_s, clock)
        self.receipts = 0
        self.resent = 0
        self.client_id = client_id
        self.outbox = outbox
        self.inflight = max(1, inflight)
        self.max_payload_bytes = settings.max_payload_kb * 1024
        self.on_message = on_message
        self.on_connected = on_connected
        self.on_error = on_error
        self.connected = threading.Event()
        self.ready = threading.Event()  # connected and the subscriptions acknowledged (SUBACK)
        self._sub_mid: int | None = None
        self.errors: deque[str] = deque(maxlen=100)
        self.connects = 0
        self._subscriptions: dict[str, int] = {}
        self._tracked: dict[int, _Row | Delivery] = {}  # mid -> what it was
        self._early: dict[int, ReasonCode] = {}  # PUBACKs that beat the mid registration
        self._lock = threading.Lock()
        self._cursor = 0  # highest outbox row id handed to paho by this process
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pump: threading.Thread | None = None
        self._client = self._make_client(will)

    # ------------------------------------------------------------------ paho settings
    def _make_client(self, will: tuple[str, bytes] | None) -> mqtt.Client:
        s = self.settings
        if s.mqtt_version == 5:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        else:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                protocol=mqtt.MQTTv311,
                clean_session=False,
            )
        client.max_inflight_messages_set(self.inflight + 20)  # outbox window + direct publishes
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(
            min_delay=max(1, round(s.reconnect_min_s)), max_delay=round(s.reconnect_max_s)
        )
        if s.username:
            client.username_pw_set(s.username, s.resolved_password() or None)
        if s.tls:
            client.tls_set(
                ca_certs=s.ca_file or None,
                certfile=s.cert_file or None,
                keyfile=s.key_file or None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def start(self) -> None:
        """Connect in the background (works while the broker is down) and start the outbox pump."""
        s = self.settings
        if s.mqtt_version == 5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = s.session_expiry_s
            self._client.connect_async(s.host, s.port, s.keepalive, clean_start=False, properties=props)
        else:
            self._client.connect_async(s.host, s.port, s.keepalive)
        if self.receipt_topic is not None:
            self._subscriptions[self.receipt_topic] = 1
        self._client.loop_start()
        self._pump = threading.Thread(target=self._pump_loop, name="outbox-pump", daemon=True)
        self._pump.start()

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait until connected and subscribed (SUBACK received)."""
        return self.ready.wait(timeout_s)

    def stop(self, flush_timeout_s: float = 0.0) -> bool:
        """Flush the outbox for up to ``flush_timeout_s``, disconnect, stop threads. True if all flushed."""
        flushed = self.flush(flush_timeout_s) if flush_timeout_s > 0 else self.pending_count() == 0
        self._stop.set()
        self._wake.set()
        if self._pump is not None:
            self._pump.join(timeout=5)
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()
        self.ready.clear()
        return flushed

    def kill(self) -> None:
        """Drop the connection without a DISCONNECT (the broker publishes the will). For tests."""
        self._stop.set()
        self._wake.set()
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
        self._track(info.mid, delivery)  # QoS 0 completes at once (paho calls on_publish on send)
        return delivery

    def enqueue(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Store in the outbox first (durable), then let the pump send it. Returns the row id."""
        if self.outbox is None:
            raise TransportError("this transport has no outbox")
        self.check_size(topic, payload)
        key = key_for_payload(topic, payload) if self.receipt_topic is not None else None
        row_id = self.outbox.put(topic, payload, qos=qos, retain=retain, key=key)
        self._wake.set()
        return row_id

    def pending_count(self) -> int:
        return self.outbox.stats().pending if self.outbox is not None else 0

    def unconfirmed_count(self) -> int:
        """Rows sent (PUBACKed) that wait for the collector's receipt."""
        return len(self._awaiting)

    def flush(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty, up to ``timeout_s``: every row confirmed by the collector
        (with receipts) or PUBACKed (without), or set aside."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        while self.pending_count() > 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    # ------------------------------------------------------------------ internals
    def _track(self, mid: int, what: _Row | Delivery) -> None:
        with self._lock:
            early = self._early.pop(mid, None)
            if early is None:
                self._tracked[mid] = what
        if early is not None:
            self._complete(what, early)

    def _pump_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._pump_once()
            except Exception as exc:  # keep pumping; the error is reported, the rows stay
                self._error(f"outbox pump: {exc}")

    def _rows_in_flight(self) -> int:
        with self._lock:
            return sum(isinstance(v, _Row) for v in self._tracked.values())

    def _resend_due(self) -> None:
        """Send again the rows whose receipt did not come in time (or that nobody received)."""
        room = self.inflight - self._rows_in_flight()
        if room <= 0:
            return
        with self._lock:
            flying = {v.row_id for v in self._tracked.values() if isinstance(v, _Row)}
        due = self._awaiting.due(room, flying)
        if not due:
            return
        rows = {r.id: r for r in self.outbox.rows(due)}  # type: ignore[union-attr]
        for row_id in due:
            row = rows.get(row_id)
            if row is None:  # confirmed (or dropped) meanwhile
                self._awaiting.discard([row_id])
                continue
            info = self._client.publish(row.topic, row.payload, qos=row.qos, retain=row.retain)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                return
            self.resent += 1
            self._track(info.mid, _Row(row.id, row.topic, row.key))

    def _pump_once(self) -> None:
        if self.outbox is None:
            return
        if self.connected.is_set() and len(self._awaiting):
            self._resend_due()
        while self.connected.is_set() and not self._stop.is_set():
            room = self.inflight - self._rows_in_flight()
            if room <= 0:
                return
            rows = self.outbox.pending(after_id=self._cursor, limit=room)
            if not rows:
                return
            for row in rows:
                if len(row.payload) > self.max_payload_bytes:
                    self._reject(row.id, row.topic, f"payload of {len(row.payload)} bytes over the limit")
                    self._cursor = row.id
                    continue
                info = self._client.publish(row.topic, row.payload, qos=row.qos, retain=row.retain)
                if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                    return  # paho queue full or similar: retry on the next wake
                self._cursor = row.id
                self._track(info.mid, _Row(row.id, row.topic, row.key))

    def _complete(self, what: _Row | Delivery, reason: ReasonCode) -> None:
        if isinstance(what, Delivery):
            what._finish(reason)
            if what.error is not None:
                self._error(str(what.error))
            return
        try:
            if reason.is_failure:
                self._reject(what.row_id, what.topic, describe(reason))
            elif reason.value == NO_MATCHING_SUBSCRIBERS:  # accepted, and dropped: nobody got it
                log.warning(
                    "broker had no subscriber for %s (outbox row %d): sending it again later",
                    what.topic,
                    what.row_id,
                )
                self._awaiting.sent(what.row_id)
            elif what.key is not None and self.receipt_topic is not None:
                if self.outbox.mark_sent(what.row_id):  # type: ignore[union-attr]
                    self._awaiting.sent(what.row_id)
            else:
                self.outbox.ack(what.row_id)  # type: ignore[union-attr]
        except OutboxError as exc:  # e.g. a full disk: the row stays and is sent again after a restart
            self._error(
                f"outbox row {what.row_id} delivered but its removal was not stored ({exc}); "
                "it will be sent again and the collector absorbs the copy"
            )
        self._wake.set()

    def handle_receipt(self, payload: bytes) -> None:
        """The collector committed (or dead-lettered) these messages: they leave the outbox."""
        try:
            receipt = Receipt.from_json(payload)
        except SchemaError as exc:
            self._error(f"ignoring an invalid receipt: {exc}")
            return
        if self.outbox is None:
            return
        try:
            removed = self.outbox.confirm(list(receipt.committed)) if receipt.committed else []
            rejected = [(r.key, r.reason) for r in receipt.rejected]
            set_aside = self.outbox.reject_keys(rejected) if rejected else []
        except OutboxError as exc:  # the rows stay; the next receipt (after a re-send) removes them
            self._error(f"receipt not applied to the outbox ({exc})")
            return
        self._awaiting.discard([*removed, *set_aside])
        self.receipts += 1
        for key, reason in rejected:
            self._error(f"the collector refused {key}: {reason}; set aside")
        self._wake.set()

    def _reject(self, row_id: int, topic: str, reason: str) -> None:
        self.outbox.reject(row_id, reason)  # type: ignore[union-attr]
        self._error(f"broker refused publish to {topic}: {reason}; outbox row {row_id} set aside")

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
            self.max_payload_bytes = min(self.settings.max_payload_kb * 1024, int(limit) - 1024)
        self.connects += 1
        self._subscribe_all(client)
        log.info("connected to %s:%s (session present: %s)", self.settings.host, self.settings.port, flags)
        self.connected.set()
        self._wake.set()
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
        if not self._stop.is_set():
            log.warning("disconnected from broker: %s", reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            what = self._tracked.pop(mid, None)
            if what is None:
                self._early[mid] = reason_code
                return
        self._complete(what, reason_code)

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
