"""The agent's configuration: ``agent.toml``, then ``EDGEBENCH_*`` environment variables, then flags.

Layout (every key optional; see :class:`AgentConfig` for defaults)::

    device_id = "pi-kitchen"            # default: the hostname
    tags = ["pi4", "lab"]
    data_dir = "/var/lib/edgebench"     # outbox.db, jobs/, cache/
    [broker]    host port mqtt_version(5|3) keepalive tls ca_file cert_file key_file
                username password password_file session_expiry_s max_payload_kb
                reconnect_min_s reconnect_max_s client_id
    [outbox]    max_rows inflight receipts confirm_timeout_s confirm_timeout_max_s
    [jobs]      trusted_keys cache_mb max_artifact_mb max_job_s max_threads chunk_size chunk_timeout_s
                chunk_retries
    [heartbeat] interval_s
    [metrics]   port host               # Prometheus endpoint (`agent run --metrics-port`); port 0: none

Everything is validated when loaded; a mistake raises :class:`ConfigError` with one clear line that
names the file and the key (``agent.toml: [broker] port: expected an integer, got 'abc'``). The
``[broker]`` checks and the password rule (``password`` or ``password_file``, never both) are the
collector's too: :mod:`wire.broker`. :class:`ConfigError` is :class:`wire.broker.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from agent.delivery.settings import AgentBrokerSettings, check_agent_broker
from wire.broker import ConfigError
from wire.topics import TopicError, check_id

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "AgentBrokerSettings",
    "AgentConfig",
    "BrokerSettings",
    "ConfigError",
    "HeartbeatSettings",
    "JobsSettings",
    "MetricsSettings",
    "OutboxSettings",
    "load_config",
]

DEFAULT_CONFIG_PATH = Path("/etc/edgebench/agent.toml")


# The agent's [broker] table: the shared connection settings (wire.broker) plus the device's own.
BrokerSettings = AgentBrokerSettings


@dataclass(frozen=True)
class OutboxSettings:
    max_rows: int = 100_000
    inflight: int = 100  # outbox rows published and awaiting PUBACK at once
    # End-to-end acknowledgement: results and job events stay until the collector's receipt says they
    # are committed (false: they leave on the broker's PUBACK, for a collector older than receipts).
    receipts: bool = True
    confirm_timeout_s: float = 30.0  # no receipt this long after the PUBACK: send again (doubling)
    confirm_timeout_max_s: float = 600.0


@dataclass(frozen=True)
class JobsSettings:
    trusted_keys: tuple[str, ...] = ()
    cache_mb: float = 2048
    max_artifact_mb: float = 512
    max_job_s: float = 3600
    max_threads: int = 0  # 0: no limit; else runtime threads are capped at this (also the default)
    chunk_size: int = 256 * 1024
    chunk_timeout_s: float = 10.0  # no chunk for this long: ask again for the missing ones
    chunk_retries: int = 5


@dataclass(frozen=True)
class HeartbeatSettings:
    interval_s: float = 30.0


@dataclass(frozen=True)
class MetricsSettings:
    port: int = 0  # the Prometheus endpoint (agent/service/metrics.py); 0: none
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class AgentConfig:
    device_id: str = field(default_factory=lambda: _default_device_id())
    tags: tuple[str, ...] = ()
    data_dir: Path = Path("/var/lib/edgebench")
    broker: AgentBrokerSettings = field(default_factory=AgentBrokerSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    jobs: JobsSettings = field(default_factory=JobsSettings)
    heartbeat: HeartbeatSettings = field(default_factory=HeartbeatSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)

    @property
    def client_id(self) -> str:
        return self.broker.client_id or f"edgebench-agent-{self.device_id}"

    @property
    def outbox_path(self) -> Path:
        return self.data_dir / "outbox.db"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    def validate(self) -> AgentConfig:
        _check(self)
        return self


def _default_device_id() -> str:
    name = socket.gethostname().split(".")[0] or "edgebench-device"
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in name)
    return cleaned[:64] or "edgebench-device"


_SECTIONS = {
    "broker": AgentBrokerSettings,
    "outbox": OutboxSettings,
    "jobs": JobsSettings,
    "heartbeat": HeartbeatSettings,
    "metrics": MetricsSettings,
}
_TOP = {"device_id", "tags", "data_dir"}

ENV = {
    "EDGEBENCH_DEVICE_ID": "device_id",
    "EDGEBENCH_TAGS": "tags",
    "EDGEBENCH_DATA_DIR": "data_dir",
    "EDGEBENCH_BROKER_HOST": "broker.host",
    "EDGEBENCH_BROKER_PORT": "broker.port",
    "EDGEBENCH_BROKER_USERNAME": "broker.username",
    "EDGEBENCH_BROKER_PASSWORD": "broker.password",
}


def _coerce(where: str, value: Any, default: Any, from_text: bool) -> Any:
    """Check ``value`` against the type of ``default``; text from env/flags is converted."""
    kind = type(default)
    try:
        if isinstance(default, bool):
            if from_text and isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
            if isinstance(value, bool):
                return value
        elif isinstance(default, int):
            if from_text and isinstance(value, str):
                return int(value)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif isinstance(default, float):
            if from_text and isinstance(value, str):
                return float(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif isinstance(default, (str, Path)):
            if isinstance(value, (str, Path)):
                return kind(value) if isinstance(default, Path) else str(value)
        elif isinstance(default, tuple):
            if from_text and isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return tuple(value)
    except ValueError:
        pass
    names = {bool: "true or false", int: "an integer", float: "a number", tuple: "a list of strings"}
    raise ConfigError(f"{where}: expected {names.get(kind, 'a string')}, got {value!r}")


def _apply(config: AgentConfig, key: str, value: Any, origin: str, from_text: bool) -> AgentConfig:
    section, _, name = key.rpartition(".")
    if not section:
        if name not in _TOP:
            raise ConfigError(
                f"{origin}: unknown key {name!r} (known: {', '.join(sorted(_TOP))}, [sections])"
            )
        return replace(
            config, **{name: _coerce(f"{origin}: {name}", value, getattr(config, name), from_text)}
        )
    if section not in _SECTIONS:
        raise ConfigError(f"{origin}: unknown section [{section}] (known: {', '.join(sorted(_SECTIONS))})")
    sub = getattr(config, section)
    known = {f.name for f in fields(sub)}
    if name not in known:
        raise ConfigError(f"{origin}: [{section}] unknown key {name!r} (known: {', '.join(sorted(known))})")
    coerced = _coerce(f"{origin}: [{section}] {name}", value, getattr(sub, name), from_text)
    return replace(config, **{section: replace(sub, **{name: coerced})})


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """File, then env (``EDGEBENCH_*``), then ``overrides`` (flags: ``{"broker.port": 1884, ...}``).

    ``path=None`` reads no file (env and flags only). Raises ConfigError on any problem.
    """
    env = os.environ if env is None else env
    config = AgentConfig()
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        for key, value in data.items():
            if isinstance(value, dict):
                if key not in _SECTIONS:
                    raise ConfigError(
                        f"{path}: unknown section [{key}] (known: {', '.join(sorted(_SECTIONS))})"
                    )
                for sub_key, sub_value in value.items():
                    config = _apply(config, f"{key}.{sub_key}", sub_value, str(path), from_text=False)
            else:
                config = _apply(config, key, value, str(path), from_text=False)
    for var, key in ENV.items():
        if env.get(var):
            config = _apply(config, key, env[var], var, from_text=True)
    for key, value in (overrides or {}).items():
        if value is not None:
            config = _apply(config, key, value, f"--{key.rpartition('.')[2].replace('_', '-')}", True)
    return config.validate()


def _check(c: AgentConfig) -> None:
    try:
        check_id(c.device_id)
        for tag in c.tags:
            check_id(tag, "tag")
    except TopicError as exc:
        raise ConfigError(str(exc)) from None
    b = c.broker
    check_agent_broker(b)
    if c.outbox.max_rows < 1 or c.outbox.inflight < 1:
        raise ConfigError("[outbox] max_rows and inflight: must be >= 1")
    if not 0 < c.outbox.confirm_timeout_s <= c.outbox.confirm_timeout_max_s:
        raise ConfigError("[outbox] confirm_timeout_s: must be > 0 and <= confirm_timeout_max_s")
    j = c.jobs
    for key in j.trusted_keys:
        if not Path(key).is_file():
            raise ConfigError(f"[jobs] trusted_keys: no such file {key}")
    for name in ("cache_mb", "max_artifact_mb", "max_job_s", "chunk_timeout_s"):
        if getattr(j, name) <= 0:
            raise ConfigError(f"[jobs] {name}: must be > 0")
    if j.max_artifact_mb > j.cache_mb:
        raise ConfigError(f"[jobs] max_artifact_mb ({j.max_artifact_mb}) exceeds cache_mb ({j.cache_mb})")
    if not 1024 <= j.chunk_size <= b.max_payload_kb * 1024:
        raise ConfigError(f"[jobs] chunk_size: must be 1024..{b.max_payload_kb * 1024} bytes")
    if j.chunk_retries < 0:
        raise ConfigError("[jobs] chunk_retries: must be >= 0")
    if j.max_threads < 0:
        raise ConfigError("[jobs] max_threads: must be >= 0 (0: no limit)")
    if c.heartbeat.interval_s <= 0:
        raise ConfigError("[heartbeat] interval_s: must be > 0")
    if not 0 <= c.metrics.port <= 65535:
        raise ConfigError("[metrics] port: must be 0..65535 (0: no endpoint)")


def as_dict(config: AgentConfig) -> dict[str, Any]:
    """Plain dict (for `agent status` and logs), with the password masked."""
    data = dataclasses.asdict(config)
    data["data_dir"] = str(config.data_dir)
    if data["broker"]["password"]:
        data["broker"]["password"] = "***"
    return data
