"""One push: connect, serve the job's chunks, publish the signed job (QoS 1), follow each device's
progress from its events (until every device is done or the timeout)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils

from collector.config import CollectorConfig
from collector.fleet.artifacts import RegisteredArtifact, register
from collector.fleet.chunks import ChunkServer
from collector.fleet.errors import FleetError
from collector.fleet.jobs import addressed_by, build_job, sign
from collector.fleet.listings import DISPLAY, FINAL
from collector.messages.parse import CHUNK_SHARE
from collector.mqtt.client import connect_kwargs, make_client
from collector.store.sqlite import insert_job_events, record_job, set_job_state
from wire import topics
from wire.schema import BenchSettings, Job, JobEvent

log = logging.getLogger("edgebench.fleet")


@dataclass
class DeviceProgress:
    device_id: str
    state: str = "queued"  # queued | transferring | running | done | failed
    agent_state: str = ""  # the agent's own word (received, fetching, verifying, rejected...)
    progress: float | None = None
    detail: str = ""
    results: int = 0
    chunks_sent: int = 0
    updated: float = field(default_factory=time.monotonic)

    @property
    def final(self) -> bool:
        return self.state in ("done", "failed")


def apply_event(progress: dict[str, DeviceProgress], event: JobEvent) -> DeviceProgress:
    p = progress.setdefault(event.device_id, DeviceProgress(event.device_id))
    if p.final and event.state not in FINAL:  # late, reordered event: keep the final word
        return p
    p.agent_state = event.state
    p.state = FINAL.get(event.state) or DISPLAY.get(event.state, event.state)
    p.progress = event.progress
    p.detail = event.detail
    p.results = max(p.results, len(event.result_ids))
    p.updated = time.monotonic()
    return p


@dataclass(frozen=True)
class PushOutcome:
    job: Job
    devices: dict[str, DeviceProgress]
    waited: bool
    timed_out: bool

    @property
    def ok(self) -> bool:
        return all(p.state == "done" for p in self.devices.values()) and not self.timed_out


class Pusher:
    """One push: connect, serve chunks, publish the job, follow the events (until done or timeout)."""

    def __init__(
        self,
        config: CollectorConfig,
        db: sqlite_utils.Database,
        *,
        on_update: Callable[[dict[str, DeviceProgress]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.db = db
        self.on_update = on_update
        self.clock = clock
        self.progress: dict[str, DeviceProgress] = {}
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._job_id = ""
        self._connected = threading.Event()
        self._events: list[JobEvent] = []

    def _on_connect(self, client: Any, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        shared = self.config.broker.mqtt_version == 5
        client.subscribe(
            [(topics.ALL_EVENTS, 1), ((CHUNK_SHARE if shared else "") + topics.ALL_CHUNK_REQUESTS, 1)]
        )
        self._connected.set()

    def _on_message(self, client: Any, _u: Any, msg: Any) -> None:
        from collector.messages.parse import parse

        parsed = parse(msg.topic, msg.payload, self.config.max_payload_bytes)
        if parsed.kind == "chunk_request":
            self.chunks.handle(parsed.message)
        elif parsed.kind == "event" and parsed.message.job_id == self._job_id:
            with self._lock:
                apply_event(self.progress, parsed.message)
                self._events.append(parsed.message)
            self._changed.set()

    def _served(self, request: Any, sent: int) -> None:
        with self._lock:
            p = self.progress.get(request.device_id)
            if p is not None:
                p.chunks_sent += sent
                if p.state == "queued":
                    p.state = "transferring"
        self._changed.set()

    def push(
        self,
        artifacts: Sequence[RegisteredArtifact],
        target: str,
        devices: Sequence[str],
        settings: BenchSettings,
        *,
        key_path: str | Path,
        wait: bool = True,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        expires_in_s: float | None = None,
    ) -> PushOutcome:
        """``expires_in_s``: how long devices accept the job (default: the config's ``job_expiry_s``)."""
        expiry = self.config.job_expiry_s if expires_in_s is None else expires_in_s
        job = sign(build_job(artifacts, target, settings, expires_in_s=expiry), key_path)
        register(self.db, artifacts)
        self._job_id = job.job_id
        self.progress = {d: DeviceProgress(d) for d in devices}
        self.chunks = ChunkServer(
            paths={a.ref.sha256: a.path for a in artifacts},
            on_served=self._served,
            addressed=addressed_by(target, devices, artifacts),
        )
        client = make_client(
            self.config.broker, f"edgebench-push-{job.job_id[:8]}", persistent=False, manual_ack=False
        )
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        self.chunks.attach(client)
        try:
            client.connect(**connect_kwargs(self.config.broker, persistent=False, session_expiry_s=0))
        except (OSError, ValueError) as exc:
            self.chunks.close()
            raise FleetError(
                f"cannot reach the broker at {self.config.broker.host}:{self.config.broker.port}: {exc}"
            ) from None
        client.loop_start()
        timed_out = False
        try:
            if not self._connected.wait(connect_timeout_s):
                raise FleetError(
                    f"no answer from the broker at {self.config.broker.host}:{self.config.broker.port}"
                )
            time.sleep(0.1)  # SUBACK before anyone can answer
            record_job(self.db, job, state="published")
            info = client.publish(topics.jobs_topic_for_target(target), job.to_json(), qos=1)
            info.wait_for_publish(timeout=connect_timeout_s)
            if not info.is_published():
                set_job_state(self.db, job.job_id, "unpublished")
                raise FleetError("the broker did not acknowledge the job")
            if self.on_update:
                self.on_update(self.progress)
            if wait:
                timed_out = self._follow(job, timeout_s)
        finally:
            client.disconnect()
            client.loop_stop()
            self.chunks.close()
        return PushOutcome(job, dict(self.progress), wait, timed_out)

    def _follow(self, job: Job, timeout_s: float) -> bool:
        """Store and show the job's events until every device is final or the timeout; True: timed out."""
        timed_out = False
        deadline = self.clock() + timeout_s
        while True:
            self._changed.wait(0.25)
            self._changed.clear()
            with self._lock:
                snapshot = dict(self.progress)
                events, self._events = self._events, []
            if events:
                insert_job_events(self.db, events)
            if self.on_update:
                self.on_update(snapshot)
            if snapshot and all(p.final for p in snapshot.values()):
                break
            if self.clock() >= deadline:
                timed_out = True
                break
        states = {p.state for p in self.progress.values()}
        summary = "timeout" if timed_out else ("done" if states == {"done"} else "failed")
        set_job_state(self.db, job.job_id, summary)
        return timed_out
