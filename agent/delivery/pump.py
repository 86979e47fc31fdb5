"""The outbox pump: which outbox row goes to the broker next, and what each answer does to it.

* Rows are published in id order, at most ``inflight`` awaiting PUBACK. A failure code (0x87 Not
  authorized, 0x97 Quota exceeded, ...) moves the row aside and is reported as an error. 0x10 "No
  matching subscribers" means nobody received it (the collector is not subscribed, e.g. just after a
  broker restart): the row stays and is sent again later. After a reconnect paho re-sends the rows it
  still holds (older ones), then the pump continues with the rest, in order.
* End-to-end acknowledgement (``receipts`` true): a PUBACK is one hop. A row with a delivery key
  (results, job events: :mod:`wire.receipts`) is only marked sent; it leaves the outbox when the
  collector's :class:`~wire.schema.Receipt` lists its key as committed (or as a dead letter: set aside
  with the collector's reason). A sent row without a receipt is sent again after ``confirm_timeout_s``,
  doubling up to ``confirm_timeout_max_s``; every row is sent again after a restart. Duplicates are
  harmless: the collector's writes are idempotent and it confirms copies too.
* Direct publishes (status, chunk requests) share the message-id bookkeeping: a :class:`Delivery` is
  the caller's handle on the broker's answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from agent.delivery.errors import PublishError, TransportError, describe
from agent.delivery.outbox import Outbox, OutboxError
from agent.delivery.resend import ResendSchedule
from wire.codec import SchemaError
from wire.schema import Receipt

log = logging.getLogger("edgebench.agent.transport")

__all__ = ["Delivery", "OutboxPump"]

NO_MATCHING_SUBSCRIBERS = 0x10
_SENT = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)  # paho took it (or will, on connect)

Publish = Callable[..., mqtt.MQTTMessageInfo]  # paho's Client.publish(topic, payload, qos=, retain=)


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


class OutboxPump:
    """One thread that feeds outbox rows to ``publish``; PUBACKs (:meth:`on_publish`) and receipts
    (:meth:`handle_receipt`) arrive on paho's network thread."""

    def __init__(
        self,
        outbox: Outbox | None,
        publish: Publish,
        *,
        connected: threading.Event,
        max_payload_bytes: int,
        inflight: int,
        receipts: bool,
        confirm_timeout_s: float,
        confirm_timeout_max_s: float,
        clock: Callable[[], float],
        on_error: Callable[[str], None],
    ):
        self.outbox = outbox
        self._publish = publish
        self._connected = connected
        self.max_payload_bytes = max_payload_bytes  # lowered by the transport to the broker's limit
        self.inflight = max(1, inflight)
        self.receipts_enabled = receipts
        self._error = on_error
        # sent rows waiting for a receipt (or sent again after "no matching subscribers")
        self._awaiting = ResendSchedule(confirm_timeout_s, confirm_timeout_max_s, clock)
        self.receipts = 0
        self.resent = 0
        self._tracked: dict[int, _Row | Delivery] = {}  # mid -> what it was
        self._early: dict[int, ReasonCode] = {}  # PUBACKs that beat the mid registration
        self._lock = threading.Lock()
        self._cursor = 0  # highest outbox row id handed to paho by this process
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="outbox-pump", daemon=True)
        self._thread.start()

    def stop(self, *, wait: bool = True) -> None:
        self._stop.set()
        self._wake.set()
        if wait and self._thread is not None:
            self._thread.join(timeout=5)

    def wake(self) -> None:
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------ counts
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

    # ------------------------------------------------------------------ message ids
    def track(self, mid: int, what: _Row | Delivery) -> None:
        with self._lock:
            early = self._early.pop(mid, None)
            if early is None:
                self._tracked[mid] = what
        if early is not None:
            self._complete(what, early)

    def on_publish(self, mid: int, reason_code: ReasonCode) -> None:
        """paho's on_publish (network thread): the broker answered message ``mid``."""
        with self._lock:
            what = self._tracked.pop(mid, None)
            if what is None:
                self._early[mid] = reason_code
                return
        self._complete(what, reason_code)

    def _rows_in_flight(self) -> int:
        with self._lock:
            return sum(isinstance(v, _Row) for v in self._tracked.values())

    # ------------------------------------------------------------------ the pump thread
    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._pump_once()
            except Exception as exc:  # keep pumping; the error is reported, the rows stay
                self._error(f"outbox pump: {exc}")

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
            info = self._publish(row.topic, row.payload, qos=row.qos, retain=row.retain)
            if info.rc not in _SENT:
                return
            self.resent += 1
            self.track(info.mid, _Row(row.id, row.topic, row.key))

    def _pump_once(self) -> None:
        if self.outbox is None:
            return
        if self._connected.is_set() and len(self._awaiting):
            self._resend_due()
        while self._connected.is_set() and not self._stop.is_set():
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
                info = self._publish(row.topic, row.payload, qos=row.qos, retain=row.retain)
                if info.rc not in _SENT:
                    return  # paho queue full or similar: retry on the next wake
                self._cursor = row.id
                self.track(info.mid, _Row(row.id, row.topic, row.key))

    # ------------------------------------------------------------------ answers
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
            elif what.key is not None and self.receipts_enabled:
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
