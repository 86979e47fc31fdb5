"""Start and stop a local mosquitto broker on a free loopback port (stdlib only).

Used by the test suite, the benchmarks and `edgebench demo`. The broker is a child process we
started; it is stopped by its own PID and nothing else.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from wire.errors import EdgebenchError


class BrokerError(EdgebenchError, RuntimeError):
    """mosquitto is missing, failed to start, or did not stop."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
    """Stop a child we started, by its PID: ``sig`` first, SIGKILL if it is still there after the timeout."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)


def mosquitto_path() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if Path(candidate).exists():
            return candidate
    return None


@dataclass
class MosquittoBroker:
    """A mosquitto we run ourselves. ``extra_config`` lines are appended to the generated config.

    Persistence is on (with ``autosave_on_changes``) so that a restart with the same ``workdir``
    keeps persistent sessions and queued QoS 1 messages, as the production config does.
    """

    workdir: Path
    port: int = 0
    host: str = "127.0.0.1"
    extra_config: list[str] = field(default_factory=list)
    allow_anonymous: bool = True
    max_queued_messages: int = 100000
    process: subprocess.Popen | None = None
    mqtt_version: int = 5
    name: str = "mosquitto"

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            "autosave_on_changes true",
            f"max_queued_messages {self.max_queued_messages}",
            "max_inflight_messages 0",
            "max_packet_size 16777216",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            # as root mosquitto drops to user "mosquitto", which cannot write its persistence here
            *(["user root"] if os.geteuid() == 0 else []),
            *self.extra_config,
        ]
        self.config_path.write_text("\n".join(lines) + "\n")
        return self.config_path

    def start(self, timeout_s: float = 10.0) -> MosquittoBroker:
        binary = mosquitto_path()
        if binary is None:
            raise BrokerError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        if self.port == 0:
            self.port = free_port(self.host)
        self.write_config()
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.process = subprocess.Popen(
            [binary, "-c", str(self.config_path)], stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        if not wait_for_port(self.host, self.port, timeout_s):
            self.stop()
            raise BrokerError(f"mosquitto did not listen on {self.host}:{self.port}: {self.log_tail()}")
        return self

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        """Stop our broker by PID (SIGTERM saves persistence; SIGKILL simulates a crash)."""
        proc, self.process = self.process, None
        stop_process(proc, sig, timeout_s)

    def restart(self) -> MosquittoBroker:
        """Stop and start again on the same port and persistence directory."""
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class EmbeddedBroker:
    """amqtt, a pure-Python MQTT 3.1.1 broker from PyPI, for machines without mosquitto.

    It speaks MQTT 3.1.1 only, so clients connect with ``mqtt_version = 3``; QoS 1 with acks after
    commit still holds. Its persistence does not survive a crash: use mosquitto in production.
    """

    workdir: Path
    port: int = 0
    host: str = "127.0.0.1"
    process: subprocess.Popen | None = None
    mqtt_version: int = 3
    name: str = "amqtt (embedded, MQTT 3.1.1)"

    @property
    def log_path(self) -> Path:
        return self.workdir / "amqtt.log"

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        import importlib.util
        import sys

        if importlib.util.find_spec("amqtt") is None:
            raise BrokerError(
                "no MQTT broker: install mosquitto (apt-get install mosquitto) or pip install amqtt"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = free_port(self.host)
        config = self.workdir / "amqtt.yaml"
        config.write_text(
            "listeners:\n  default:\n    type: tcp\n"
            f"    bind: {self.host}:{self.port}\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
        )
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.process = subprocess.Popen(
            [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(config)],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        if not wait_for_port(self.host, self.port, timeout_s):
            self.stop()
            raise BrokerError(f"amqtt did not listen on {self.host}:{self.port}")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        proc, self.process = self.process, None
        stop_process(proc, sig, timeout_s)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_local_broker(workdir: Path, prefer: str = "auto") -> MosquittoBroker | EmbeddedBroker:
    """mosquitto when it is installed (or asked for), else the embedded amqtt broker."""
    if prefer not in ("auto", "mosquitto", "embedded"):
        raise BrokerError(f"unknown broker choice {prefer!r}: use auto, mosquitto or embedded")
    if prefer == "mosquitto" or (prefer == "auto" and mosquitto_path() is not None):
        return MosquittoBroker(workdir=workdir / "mosquitto").start()
    return EmbeddedBroker(workdir=workdir / "amqtt").start()
