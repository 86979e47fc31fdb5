"""Publish every line of a file as one QoS 1 message (MQTT v5) and exit once the broker acknowledged all.

    python -m testkit.publish PORT TOPIC FILE

Used instead of `mosquitto_pub -l`, which in mosquitto 2.0.11 sometimes never exits at end of input
(eclipse-mosquitto/mosquitto#1448-like race), so a test or benchmark cannot tell when it is done.
"""

from __future__ import annotations

import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def publish_file(port: int, topic: str, path: str, host: str = "127.0.0.1", timeout_s: float = 300.0) -> int:
    with open(path, "rb") as fh:
        lines = [line.rstrip(b"\n") for line in fh if line.strip()]
    acked = [0]
    done = threading.Event()

    def on_publish(client, userdata, mid, reason_code, properties) -> None:
        acked[0] += 1
        if acked[0] >= len(lines):
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_publish = on_publish
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(host, port)
    client.loop_start()
    for line in lines:
        client.publish(topic, line, qos=1)
    ok = done.wait(timeout_s) or not lines
    deadline = time.monotonic() + 5
    while not ok and time.monotonic() < deadline:
        time.sleep(0.05)
    client.disconnect()
    client.loop_stop()
    if acked[0] < len(lines):
        print(f"only {acked[0]} of {len(lines)} acknowledged", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(publish_file(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
