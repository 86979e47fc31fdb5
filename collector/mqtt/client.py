"""The collector's paho clients: every MQTT setting in one place (v5 or 3.1.1, TLS, auth, sessions).

Used by the ingest workers (:func:`make_ingest_client`: buffered reads through
:class:`collector.ingest.mqttfast.FastClient`) and by ``fleet push`` / the chunk server (:func:`make_client`).
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.config import BrokerSettings
from collector.ingest.mqttfast import FAST_PATH, FastClient

__all__ = ["connect_kwargs", "make_client", "make_ingest_client"]


def make_client(
    broker: BrokerSettings,
    client_id: str,
    *,
    persistent: bool = True,
    manual_ack: bool = True,
    fast: bool = False,
) -> mqtt.Client:
    """A paho client with every setting in one place (v5 or 3.1.1, TLS, auth).

    ``fast``: a :class:`collector.ingest.mqttfast.FastClient` (buffered socket reads), for the ingest hot
    path.
    """
    cls = FastClient if fast and FAST_PATH else mqtt.Client
    if broker.mqtt_version == 5:
        client = cls(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=manual_ack,
        )
    else:
        client = cls(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=not persistent,
            manual_ack=manual_ack,
        )
    if broker.tls:
        client.tls_set(
            ca_certs=broker.ca_file or None,
            certfile=broker.cert_file or None,
            keyfile=broker.key_file or None,
        )
    if broker.username:
        client.username_pw_set(broker.username, broker.resolved_password() or None)
    client.max_queued_messages_set(0)
    client.max_inflight_messages_set(1000)
    # Back within 2 s of a broker restart: until a client has resubscribed (a shared subscription is
    # not kept in mosquitto's persistence), messages for it are dropped ("no matching subscribers").
    client.reconnect_delay_set(0.5, 2)
    return client


def make_ingest_client(
    broker: BrokerSettings, client_id: str, *, persistent: bool = True, manual_ack: bool = True
) -> mqtt.Client:
    return make_client(broker, client_id, persistent=persistent, manual_ack=manual_ack, fast=True)


def connect_kwargs(broker: BrokerSettings, *, persistent: bool, session_expiry_s: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"host": broker.host, "port": broker.port, "keepalive": broker.keepalive}
    if broker.mqtt_version == 5:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry_s if persistent else 0
        kwargs["clean_start"] = not persistent
        kwargs["properties"] = props
    return kwargs
