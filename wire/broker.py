"""The broker connection both sides configure, validated in one place (stdlib only).

:class:`BrokerSettings` is what the agent's ``[broker]`` table and the collector's ``[broker]`` table
share: where the broker is, how to log in, the MQTT session and the reconnect backoff. Each side
subclasses it only to change a default or add a setting of its own (the agent's payload limit and
client id, the collector's fast reconnect); each side keeps its own TOML/env loading and then calls
:func:`check_broker`.

The password rule (both sides): ``password`` or ``password_file`` (its content, stripped), whichever is
set; giving both is a :class:`ConfigError` (a file layer setting one and the environment the other is a
mistake to report, not to resolve silently).

:class:`ConfigError` is the one configuration error of agent and collector: ``agent.service.config`` and
``collector.config`` raise this class (and re-export it), so a caller catches one class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wire.errors import EdgebenchError

__all__ = ["BrokerSettings", "ConfigError", "check_broker"]


class ConfigError(EdgebenchError, ValueError):
    """A configuration (the agent's or the collector's) is missing, unreadable or invalid."""

    reason = "config"


@dataclass(frozen=True)
class BrokerSettings:
    host: str = "localhost"
    port: int = 1883
    mqtt_version: int = 5  # 5, or 3 for MQTT 3.1.1 (e.g. an embedded broker)
    keepalive: int = 30
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password: str = ""
    password_file: str = ""
    session_expiry_s: int = 7 * 24 * 3600  # MQTT v5 Session Expiry Interval of a persistent session
    reconnect_min_s: float = 1.0  # paho's reconnect backoff: from min, doubling up to max
    reconnect_max_s: float = 60.0

    def resolved_password(self) -> str:
        """``password`` or the content of ``password_file`` (the rule in the module docstring)."""
        if self.password and self.password_file:
            raise ConfigError(_BOTH_PASSWORDS)
        if not self.password_file:
            return self.password
        try:
            return Path(self.password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"[broker] password_file: cannot read {self.password_file}: {exc}") from None


_BOTH_PASSWORDS = "[broker] password and password_file: give one, not both"


def check_broker(b: BrokerSettings) -> None:
    """Raise :class:`ConfigError` (one line naming the ``[broker]`` key) unless ``b`` can be used."""
    if not b.host:
        raise ConfigError("[broker] host: must not be empty")
    if not 0 < b.port < 65536:
        raise ConfigError(f"[broker] port: must be 1-65535, got {b.port}")
    if b.mqtt_version not in (3, 5):
        raise ConfigError(f"[broker] mqtt_version: must be 5 or 3 (MQTT 3.1.1), got {b.mqtt_version}")
    if not 5 <= b.keepalive <= 65535:
        raise ConfigError(f"[broker] keepalive: must be 5-65535 seconds, got {b.keepalive}")
    if b.session_expiry_s < 0:
        raise ConfigError("[broker] session_expiry_s: must be >= 0")
    if not 0 < b.reconnect_min_s <= b.reconnect_max_s:
        raise ConfigError("[broker] reconnect_min_s/reconnect_max_s: need 0 < min <= max")
    if b.password and b.password_file:
        raise ConfigError(_BOTH_PASSWORDS)
    files = [("password_file", b.password_file)]
    if b.tls:
        files += [("ca_file", b.ca_file), ("cert_file", b.cert_file), ("key_file", b.key_file)]
        if bool(b.cert_file) != bool(b.key_file):
            raise ConfigError("[broker] cert_file and key_file: a client certificate needs both")
    elif b.ca_file or b.cert_file or b.key_file:
        raise ConfigError("[broker] ca_file/cert_file/key_file are set but tls = false")
    for name, value in files:
        if value and not Path(value).is_file():
            raise ConfigError(f"[broker] {name}: no such file {value}")
