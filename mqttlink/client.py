"""Every paho-mqtt setting of agent and collector, in one place.

* paho >= 2, ``CallbackAPIVersion.VERSION2``.
* MQTT v5 (``mqtt_version = 5``): a persistent session is ``clean_start=False`` on every connect,
  including the first, with the Session Expiry Interval of the settings; a throwaway one is
  ``clean_start=True`` with expiry 0. MQTT 3.1.1 (``mqtt_version = 3``): ``clean_session`` is
  ``not persistent`` (set when the client is made: 3.1.1 has no per-connect flag).
* TLS (``ssl.PROTOCOL_TLS_CLIENT``: certificate and host name checked), user name and the password of
  :meth:`wire.broker.BrokerSettings.resolved_password`.
* ``reconnect_delay_set(reconnect_min_s, reconnect_max_s)``: with ``loop_start``/``loop_forever`` paho
  reconnects with that backoff; a client starts while the broker is down.
* No paho queue (``max_queued_messages_set(0)``: what must survive lives in the caller's own store),
  ``max_inflight`` QoS 1 messages awaiting PUBACK at once.
* A last will, if given: QoS 1, retained.
"""

from __future__ import annotations

import ssl
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from wire.broker import BrokerSettings

__all__ = ["connect_kwargs", "make_client"]


def make_client(
    settings: BrokerSettings,
    client_id: str,
    *,
    persistent: bool,
    manual_ack: bool,
    max_inflight: int,
    client_class: type[mqtt.Client] | None = None,
    will: tuple[str, bytes] | None = None,
) -> mqtt.Client:
    """A configured, unconnected client (``client_class``: a paho ``Client`` subclass, e.g. the
    collector's buffered reader). Raises :class:`wire.broker.ConfigError` for an unreadable password
    file."""
    cls = client_class or mqtt.Client
    if settings.mqtt_version == 5:
        client = cls(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=manual_ack
        )
    else:
        client = cls(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=not persistent,
            manual_ack=manual_ack,
        )
    if settings.tls:
        client.tls_set(
            ca_certs=settings.ca_file or None,
            certfile=settings.cert_file or None,
            keyfile=settings.key_file or None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    if settings.username:
        client.username_pw_set(settings.username, settings.resolved_password() or None)
    client.max_queued_messages_set(0)
    client.max_inflight_messages_set(max_inflight)
    client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)  # type: ignore[arg-type]
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    return client


def connect_kwargs(
    settings: BrokerSettings, *, persistent: bool, session_expiry_s: int | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``client.connect``/``connect_async`` (``session_expiry_s``: instead of
    the settings' own, for a persistent v5 session)."""
    kwargs: dict[str, Any] = {"host": settings.host, "port": settings.port, "keepalive": settings.keepalive}
    if settings.mqtt_version == 5:
        expiry = settings.session_expiry_s if session_expiry_s is None else session_expiry_s
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry if persistent else 0
        kwargs["clean_start"] = not persistent
        kwargs["properties"] = props
    return kwargs
