"""The collector's paho clients, made by :mod:`mqttlink.client` (the settings the agent's use too).

Used by the ingest workers (:func:`make_ingest_client`: buffered reads through
:class:`collector.mqtt.fast.FastClient`) and by ``fleet push`` / the chunk server (:func:`make_client`).
The collector's reconnect backoff (back within 2 s of a broker restart) is the default of
:class:`collector.config.CollectorBrokerSettings`.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt

from collector.mqtt.fast import FAST_PATH, FastClient
from mqttlink import client as mqttlink
from wire.broker import BrokerSettings

__all__ = ["connect_kwargs", "make_client", "make_ingest_client"]

MAX_INFLIGHT = 1000  # QoS 1 messages the collector publishes (jobs, chunks, receipts) awaiting PUBACK at once


def make_client(
    broker: BrokerSettings,
    client_id: str,
    *,
    persistent: bool = True,
    manual_ack: bool = True,
    fast: bool = False,
) -> mqtt.Client:
    """A paho client (:func:`mqttlink.client.make_client`).

    ``fast``: a :class:`collector.mqtt.fast.FastClient` (buffered socket reads), for the ingest hot
    path.
    """
    return mqttlink.make_client(
        broker,
        client_id,
        persistent=persistent,
        manual_ack=manual_ack,
        max_inflight=MAX_INFLIGHT,
        client_class=FastClient if fast and FAST_PATH else None,
    )


def make_ingest_client(
    broker: BrokerSettings, client_id: str, *, persistent: bool = True, manual_ack: bool = True
) -> mqtt.Client:
    return make_client(broker, client_id, persistent=persistent, manual_ack=manual_ack, fast=True)


def connect_kwargs(broker: BrokerSettings, *, persistent: bool, session_expiry_s: int) -> dict[str, Any]:
    return mqttlink.connect_kwargs(broker, persistent=persistent, session_expiry_s=session_expiry_s)
