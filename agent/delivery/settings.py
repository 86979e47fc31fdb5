"""The device's ``[broker]`` settings: the shared connection (:class:`wire.broker.BrokerSettings`) plus
what only a device has, its payload limit and its client id."""

from __future__ import annotations

from dataclasses import dataclass

from wire.broker import BrokerSettings, ConfigError, check_broker

__all__ = ["AgentBrokerSettings", "check_agent_broker"]


@dataclass(frozen=True)
class AgentBrokerSettings(BrokerSettings):
    max_payload_kb: int = 1024  # enforced on the device before anything is queued or sent
    client_id: str = ""  # default: "edgebench-agent-<device_id>"


def check_agent_broker(b: AgentBrokerSettings) -> None:
    """:func:`wire.broker.check_broker`, and the device's own settings."""
    check_broker(b)
    if b.max_payload_kb <= 0:
        raise ConfigError("[broker] max_payload_kb: must be > 0")
