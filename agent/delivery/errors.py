"""What can go wrong between the device and the broker, and how a broker's reason code reads."""

from __future__ import annotations

from paho.mqtt.reasoncodes import ReasonCode

from wire.errors import EdgebenchError

__all__ = ["PayloadTooLarge", "PublishError", "TransportError", "describe"]


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
