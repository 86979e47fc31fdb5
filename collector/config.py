"""Collector configuration: /etc/edgebench/collector.toml, then environment, then flags.

```toml
db = "/var/lib/edgebench-collector/edgebench.db"
client_id = "edgebench-collector"
signing_key = "/etc/edgebench/keys/collector.key"
job_expiry_s = 86400    # devices accept a pushed job this long (`fleet push --expires-in` overrides)
metrics_port = 9464     # Prometheus endpoint (`serve --metrics-port`); 0 (the default): none
metrics_host = "127.0.0.1"
[broker]
host = "localhost"  port = 1883  mqtt_version = 5  keepalive = 30
tls = false  ca_file = ""  cert_file = ""  key_file = ""  username = ""  password = ""  password_file = ""
session_expiry_s = 604800  reconnect_min_s = 0.5  reconnect_max_s = 2.0
```
The ``[broker]`` table, its checks and the password rule (``password`` or ``password_file``, never both)
are the agent's too: :mod:`wire.broker`. :class:`ConfigError` is :class:`wire.broker.ConfigError`.
Environment: EDGEBENCH_COLLECTOR_DB, EDGEBENCH_COLLECTOR_CLIENT_ID, EDGEBENCH_SIGNING_KEY,
EDGEBENCH_BROKER_HOST, EDGEBENCH_BROKER_PORT, EDGEBENCH_BROKER_USERNAME, EDGEBENCH_BROKER_PASSWORD.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from wire.broker import BrokerSettings as WireBrokerSettings
from wire.broker import ConfigError, check_broker

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/edgebench/collector.toml")


@dataclass(frozen=True)
class CollectorBrokerSettings(WireBrokerSettings):
    """The shared connection settings (:mod:`wire.broker`) with the collector's reconnect backoff."""

    # Back within 2 s of a broker restart: until a client has resubscribed (a shared subscription is
    # not kept in mosquitto's persistence), messages for it are dropped ("no matching subscribers").
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 2.0


# The name callers import (tests, the demo): the collector's [broker] table.
BrokerSettings = CollectorBrokerSettings


@dataclass(frozen=True)
class CollectorConfig:
    db: str = "/var/lib/edgebench-collector/edgebench.db"
    client_id: str = "edgebench-collector"
    signing_key: str = "/etc/edgebench/keys/collector.key"
    broker: CollectorBrokerSettings = field(default_factory=CollectorBrokerSettings)
    max_payload_bytes: int = 1024 * 1024
    batch_max: int = 1000
    serve_chunks: bool = True
    receipts: bool = True  # tell devices what is committed (end-to-end ack; agents delete only then)
    job_expiry_s: int = 7 * 24 * 3600  # `fleet push` default: devices refuse the job after this long
    metrics_port: int = 0  # `serve`: the Prometheus endpoint's port (collector/service/metrics.py); 0: none
    metrics_host: str = "127.0.0.1"  # the address it binds

    @property
    def session_expiry_s(self) -> int:
        """The ingest session's expiry: ``[broker] session_expiry_s`` (the agent's key too)."""
        return self.broker.session_expiry_s


def _typed(cls: type, data: Mapping[str, Any], where: str) -> dict[str, Any]:
    known = {f.name: f for f in fields(cls)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(known))})")
        default = getattr(cls(), key)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            ok = True
        if not ok:
            raise ConfigError(f"{where}: {key} must be {type(default).__name__}, got {value!r}")
        out[key] = value
    return out


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    broker_overrides: Mapping[str, Any] | None = None,
) -> CollectorConfig:
    """File (``path``, or the default path if it exists) < environment < overrides (None values skipped)."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    file = Path(path) if path else (DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None)
    if file is not None:
        try:
            data = tomllib.loads(file.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read {file}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: invalid TOML: {exc}") from None
    broker_data = data.pop("broker", {})
    if not isinstance(broker_data, dict):
        raise ConfigError("[broker] must be a table")
    if "session_expiry_s" in data:  # its place before [broker] had it (as the agent's [broker] does)
        broker_data.setdefault("session_expiry_s", data.pop("session_expiry_s"))
    top = _typed(CollectorConfig, data, str(file or "config"))
    broker = _typed(CollectorBrokerSettings, broker_data, f"{file or 'config'} [broker]")

    for var, key in (
        ("EDGEBENCH_COLLECTOR_DB", "db"),
        ("EDGEBENCH_COLLECTOR_CLIENT_ID", "client_id"),
        ("EDGEBENCH_SIGNING_KEY", "signing_key"),
    ):
        if env.get(var):
            top[key] = env[var]
    for var, key in (
        ("EDGEBENCH_BROKER_HOST", "host"),
        ("EDGEBENCH_BROKER_PORT", "port"),
        ("EDGEBENCH_BROKER_USERNAME", "username"),
        ("EDGEBENCH_BROKER_PASSWORD", "password"),
    ):
        if env.get(var):
            value: Any = env[var]
            if key == "port":
                try:
                    value = int(value)
                except ValueError:
                    raise ConfigError(f"{var} must be an integer, got {value!r}") from None
            broker[key] = value
    top.update({k: v for k, v in (overrides or {}).items() if v is not None})
    broker.update({k: v for k, v in (broker_overrides or {}).items() if v is not None})
    if top.get("job_expiry_s", 1) <= 0:
        raise ConfigError(f"job_expiry_s must be > 0 seconds, got {top['job_expiry_s']!r}")
    if not 0 <= top.get("metrics_port", 0) <= 65535:
        raise ConfigError(f"metrics_port must be 0..65535 (0: no endpoint), got {top['metrics_port']!r}")
    config = replace(CollectorConfig(**top), broker=CollectorBrokerSettings(**broker))
    check_broker(config.broker)
    return config
