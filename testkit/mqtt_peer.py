"""Small MQTT peers for collector tests: publishers and a device stand-in (real mosquitto, real paho)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def wait_for(predicate: Callable[[], bool], timeout_s: float = 30.0, every_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return predicate()


def db_count(db_path: Path, sql: str = "SELECT COUNT(*) FROM results", params: tuple = ()) -> int:
    if not Path(db_path).exists():
        return 0
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute(sql, params).fetchone()
        return int(row[0] or 0) if row else 0
    except sqlite3.OperationalError:  # not migrated yet
        return 0
    finally:
        conn.close()


def publisher(port: int, topic: str, lines: Iterable[str], work: Path) -> subprocess.Popen:
    """A separate process publishing one QoS 1 message per line (testkit/publish.py)."""
    path = Path(work) / f"lines-{topic.replace('/', '_')}-{time.monotonic_ns()}.txt"
    path.write_text("\n".join(lines) + "\n")
    root = Path(__file__).resolve().parents[1]
    return subprocess.Popen(
        [sys.executable, "-m", "testkit.publish", str(port), topic, str(path)],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


class Peer:
    """A paho v5 client playing a device (or anyone): publish, subscribe, collect what arrives."""

    def __init__(self, port: int, client_id: str, *, host: str = "127.0.0.1"):
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.received: list[tuple[str, bytes]] = []
        self.client.on_message = lambda c, u, m: self.received.append((m.topic, m.payload))
        self.client.connect(host, port)
        self.client.loop_start()

    def subscribe(self, topic: str, qos: int = 1) -> None:
        result, _mid = self.client.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        time.sleep(0.2)  # let SUBACK arrive (bounded)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=10)
        assert info.is_published(), f"publish to {topic} not acknowledged"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
