"""A small "collector side" for agent tests: a real paho client on the test broker.

It records every result, event and status a device publishes, serves artifact chunks on request
(optionally losing some, or corrupting an artifact), and publishes (signed) jobs. It does not depend on
the collector package.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from wire import topics
from wire.receipts import event_key, result_key
from wire.schema import (
    ArtifactChunk,
    ArtifactRef,
    BenchSettings,
    CancelJob,
    ChunkRequest,
    DeviceStatus,
    Job,
    JobEvent,
    Receipt,
    ResultRecord,
    new_id,
    utc_now,
)
from wire.signing import sign_job


def wait_until(predicate: Callable[[], bool], timeout_s: float = 20.0, step_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()


class FleetPeer:
    def __init__(self, host: str, port: int, client_id: str | None = None, persistent: bool = True):
        self.host, self.port = host, port
        self.results: list[ResultRecord] = []
        self.events: list[JobEvent] = []
        self.statuses: list[DeviceStatus] = []
        self.chunk_requests: list[ChunkRequest] = []
        self.artifacts: dict[str, bytes] = {}
        self.drop_once: dict[str, set[int]] = defaultdict(set)  # sha -> chunk indices lost on first send
        self.serve_chunks = True
        self.send_receipts = True  # end-to-end acks for what it received, like the collector
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"peer-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self._persistent = persistent
        self.client.reconnect_delay_set(0.2, 1)  # type: ignore[arg-type]

    # --------------------------------------------------------------- lifecycle
    def start(self, timeout_s: float = 10.0) -> FleetPeer:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600 if self._persistent else 0
        self.client.connect_async(
            self.host, self.port, 30, clean_start=not self._persistent, properties=props
        )
        self.client.loop_start()
        if not self.connected.wait(timeout_s):
            raise TimeoutError("fleet peer could not connect")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> FleetPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        client.subscribe(
            [
                (topics.ALL_RESULTS, 1),
                (topics.ALL_EVENTS, 1),
                (topics.ALL_STATUS, 1),
                (topics.ALL_CHUNK_REQUESTS, 1),
            ]
        )
        # SUBACK races the first publishes; a tiny pause keeps tests simple
        time.sleep(0.05)
        self.connected.set()

    # --------------------------------------------------------------- inbound
    def _on_message(self, client, userdata, message) -> None:
        try:
            _device, leaf = topics.parse_device_topic(message.topic)
        except topics.TopicError:
            return
        key = None
        with self._lock:
            if leaf == "results":
                record = ResultRecord.from_json(message.payload)
                self.results.append(record)
                key = result_key(record.result_id)
            elif leaf == "events":
                event = JobEvent.from_json(message.payload)
                self.events.append(event)
                key = event_key(event.job_id, event.state, event.at)
            elif leaf == "status":
                if message.payload:
                    self.statuses.append(DeviceStatus.from_json(message.payload))
            elif leaf == "chunks/request":
                request = ChunkRequest.from_json(message.payload)
                self.chunk_requests.append(request)
        if key is not None and self.send_receipts:  # "committed" to the lists: as a collector would
            receipt = Receipt(_device, utc_now(), (key,))
            client.publish(topics.receipts(_device), receipt.to_json(), qos=1)
        if leaf == "chunks/request" and self.serve_chunks:
            self._serve(request)

    def _serve(self, request: ChunkRequest) -> None:
        data = self.artifacts.get(request.sha256)
        if data is None:
            return
        size = request.chunk_size
        total = max(1, -(-len(data) // size))
        indices = request.indices or tuple(range(total))
        for i in indices:
            if i in self.drop_once[request.sha256]:
                self.drop_once[request.sha256].discard(i)
                continue
            chunk = ArtifactChunk(request.sha256, i, total, len(data), data[i * size : (i + 1) * size])
            self.client.publish(topics.device_chunks(request.device_id), chunk.to_bytes(), qos=1)

    # --------------------------------------------------------------- outbound
    def add_artifact(self, path: Path, claimed_sha: str | None = None) -> ArtifactRef:
        data = Path(path).read_bytes()
        sha = claimed_sha or hashlib.sha256(data).hexdigest()
        self.artifacts[sha] = data
        fmt = "tflite" if str(path).endswith(".tflite") else "onnx"
        return ArtifactRef(name=Path(path).name, sha256=sha, size_bytes=len(data), format=fmt)

    def make_job(self, refs: list[ArtifactRef], target: str, settings: BenchSettings | None = None) -> Job:
        return Job(
            job_id=new_id(),
            created_at=utc_now(),
            target=target,
            artifacts=tuple(refs),
            settings=settings or BenchSettings(preset="quick", min_runs=5, min_time_s=0.05, max_time_s=1.0),
        )

    def send_job(
        self, job: Job | CancelJob, key: Path | None, device_id: str, target: str | None = None
    ) -> None:
        message = sign_job(job, key) if key is not None else job
        topic = topics.jobs_topic_for_target(target or f"device:{device_id}")
        self.client.publish(topic, message.to_json().encode(), qos=1).wait_for_publish(10)

    # --------------------------------------------------------------- queries
    def result_ids(self) -> list[str]:
        with self._lock:
            return [r.result_id for r in self.results]

    def states(self, job_id: str) -> list[str]:
        with self._lock:
            return [e.state for e in self.events if e.job_id == job_id]

    def event(self, job_id: str, state: str) -> JobEvent | None:
        with self._lock:
            return next((e for e in self.events if e.job_id == job_id and e.state == state), None)


class RawSubscriber:
    """Records (topic, payload) of everything on ``pattern`` (a persistent MQTT v5 session)."""

    def __init__(self, host: str, port: int, pattern: str, client_id: str | None = None):
        self.host, self.port, self.pattern = host, port, pattern
        self.messages: list[tuple[str, bytes]] = []
        self.connected = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"raw-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.reconnect_delay_set(0.2, 1)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        client.subscribe(self.pattern, qos=1)
        time.sleep(0.05)
        self.connected.set()

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def payloads(self) -> list[bytes]:
        with self._lock:
            return [p for _, p in self.messages]

    def start(self, timeout_s: float = 10.0) -> RawSubscriber:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect_async(self.host, self.port, 30, clean_start=False, properties=props)
        self.client.loop_start()
        if not self.connected.wait(timeout_s):
            raise TimeoutError("subscriber could not connect")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
