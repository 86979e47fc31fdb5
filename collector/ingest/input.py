"""The MQTT input of the collector: the paho client, its subscriptions, and what it sends back.

paho's network thread only puts ``(topic, payload, mid, qos)`` into the
:class:`~collector.ingest.buffer.Inbox` (with :class:`~collector.mqtt.fast.FastClient`, straight
from the packet). The client runs with ``manual_ack=True`` on a persistent session: the writer thread
calls :meth:`MqttInput.acknowledge` and :meth:`MqttInput.send_receipts` only after the batch is
committed, so a collector killed before that gets the messages again (the primary keys absorb what
was already committed).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt

from collector.config import CollectorConfig, ConfigError
from collector.ingest.buffer import Inbox, Incoming
from collector.ingest.errors import IngestError
from collector.ingest.receipts import build_receipts
from collector.ingest.stats import IngestStats
from collector.messages.parse import CHUNK_SHARE, Parsed
from collector.mqtt.client import connect_kwargs, make_ingest_client
from collector.mqtt.fast import FastClient, ack_batch
from collector.store.sidecar import SUBSCRIBED
from wire import topics

log = logging.getLogger("edgebench.collector")

__all__ = ["MqttInput"]

_SENT = (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)  # NO_CONN: paho sends it after the reconnect


class MqttInput:
    """Subscribe, queue what arrives, acknowledge and send receipts after commit.

    ``on_broker_state`` hears what the broker side says ("subscribed", "connected, not subscribed:
    ...", "disconnected ...") for the writer's state file; ``stop`` tells a disconnect that it was asked for.
    """

    def __init__(
        self,
        config: CollectorConfig,
        inbox: Inbox,
        stats: IngestStats,
        stop: threading.Event,
        *,
        on_broker_state: Callable[[str], None],
        client_factory: Callable[..., mqtt.Client] = make_ingest_client,
        shared_group: str | None = None,
        control: bool = True,
        chunk_requests: bool = False,
    ) -> None:
        self.config = config
        self.shared_group = shared_group  # results arrive on $share/<group>/... (several workers)
        self.control = control  # status, events (and chunk requests): one worker only
        self.chunk_requests = chunk_requests
        self.generation = 0  # +1 per connection: acks of messages from an earlier one are never sent
        self._inbox = inbox
        self._stats = stats
        self._stop = stop
        self._on_broker_state = on_broker_state
        self._sub_mid: int | None = None
        self._sub_topics: list[str] = []
        try:
            self.client = client_factory(config.broker, config.client_id, persistent=True, manual_ack=True)
        except (ConfigError, OSError, ValueError) as exc:  # password file, TLS files
            raise IngestError(f"broker settings: {exc}") from None
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        if isinstance(self.client, FastClient):
            self.client.on_raw_message = self._on_raw  # QoS 1 without properties: no MQTTMessage

    def subscriptions(self) -> list[tuple[str, int]]:
        share = f"$share/{self.shared_group}/" if self.shared_group else ""
        subs = [(share + topics.ALL_RESULTS, 1)]
        if self.control:
            subs += [(topics.ALL_STATUS, 1), (topics.ALL_EVENTS, 1)]
        if self.control and self.chunk_requests:
            shared = self.config.broker.mqtt_version == 5
            subs.append(((CHUNK_SHARE if shared else "") + topics.ALL_CHUNK_REQUESTS, 1))
        return subs

    # -- network thread
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        self.generation += 1
        self._stats.connected = True
        self._stats.subscribed = False
        self._on_broker_state("connected, not subscribed yet")
        log.info("connected (session present: %s)", getattr(flags, "session_present", None))
        subs = self.subscriptions()
        _rc, self._sub_mid = client.subscribe(subs)
        self._sub_topics = [t for t, _q in subs]

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, props: Any
    ) -> None:
        if mid != self._sub_mid:
            return
        refused = [f"{t} ({c})" for t, c in zip(self._sub_topics, reason_codes, strict=False) if c.is_failure]
        if refused:
            log.error("NOT SUBSCRIBED: the broker refused %s; nothing arrives there", ", ".join(refused))
            self._on_broker_state("connected, not subscribed: the broker refused " + ", ".join(refused))
            return
        self._stats.subscribed = True
        self._on_broker_state(SUBSCRIBED)
        log.info("subscribed to %d topics", len(self._sub_topics))

    def _on_connect_fail(self, client: mqtt.Client, _u: Any) -> None:
        b = self.config.broker
        log.warning("cannot reach the broker at %s:%s; retrying", b.host, b.port)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        self._stats.connected = False
        self._stats.subscribed = False
        if not self._stop.is_set():
            self._on_broker_state(f"disconnected ({reason_code}); reconnecting")
            log.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._inbox.put(msg.topic, msg.payload, msg.mid, msg.qos, self.generation)

    def _on_raw(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        self._inbox.put(topic, payload, mid, qos, self.generation)

    # -- writer thread, after the commit
    def acknowledge(self, batch: Sequence[Incoming]) -> None:
        """PUBACK the committed batch (QoS 1: one write of all of them). A message from an earlier
        connection is redelivered on this one (same or new packet id) and its copy is absorbed by the
        primary key: acking the old mid could hit another message, so it is not acked."""
        generation = self.generation
        ack_batch(self.client, [(b[2], b[3]) for b in batch if b[3] and b[5] == generation])

    def send_receipts(
        self, parsed: Sequence[Parsed], topics_: Sequence[str], payloads: Sequence[bytes]
    ) -> None:
        """End to end: the devices may now delete these from their outboxes."""
        for topic, payload in build_receipts(parsed, topics_, payloads):
            info = self.client.publish(topic, payload, qos=1)
            if info.rc in _SENT:
                self._stats.receipts_sent += 1
            else:  # the device sends the messages again after its timeout
                log.warning("receipt for %s not sent: %s", topic, mqtt.error_string(info.rc))

    def clear_retained(self, topic: str) -> None:
        """A status that is a dead letter may be retained: clear it, or every reconnect brings it back
        (the device's next heartbeat publishes its real status again). The empty message this sends
        comes back to us as a counted drop, not a dead letter."""
        info = self.client.publish(topic, b"", qos=1, retain=True)
        if info.rc in _SENT:
            self._stats.retained_cleared += 1
            log.warning("cleared the retained message on %s (a dead letter)", topic)

    # -- lifecycle
    def start(self) -> None:
        kwargs = connect_kwargs(
            self.config.broker, persistent=True, session_expiry_s=self.config.session_expiry_s
        )
        self.client.connect_async(**kwargs)
        self.client.loop_start()

    def mute(self) -> None:
        """Queue nothing more: anything arriving from now on is redelivered later."""
        self.client.on_message = lambda *a: None
        if isinstance(self.client, FastClient):
            self.client.on_raw_message = lambda *a: None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
