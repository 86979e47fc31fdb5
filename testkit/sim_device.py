"""Simulated devices for fleet-scale benchmarks (bench/fleet_sim.py): the real protocol, no measurement.

Each :class:`SimDevice` is one paho client (``mqttlink.make_client``, as the agent's) speaking what the
agent speaks through the real wire code: a retained DeviceStatus birth, heartbeats and last will;
signed jobs (:func:`wire.signing.verify` against the collector's public key, bad ones answered with a
"rejected" event); chunk fetch (ChunkRequest, ArtifactChunk, the sha256 checked, the missing chunks
asked again after ``chunk_timeout_s`` of silence); ResultRecords with latencies drawn from a log-normal
distribution; job events; and a message counts as delivered only when the collector's Receipt lists
its :mod:`wire.receipts` key (until then it is sent again every ``confirm_timeout_s``).

Many devices share one thread: :class:`SimLoop` drives every client with paho's external-loop API
(``loop_read``/``loop_write``/``loop_misc`` on a ``selectors`` loop) instead of one network thread per
client. :func:`serve_devices` is the body of one simulator process, steered over a multiprocessing pipe.
Chunks are hashed as they arrive in order (out-of-order ones held until their turn): nothing is written
to disk, so a simulated device costs a socket and a few KB, not the agent's cache.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any

from mqttlink import client as mqttlink
from testkit.records import make_record
from wire import topics
from wire.broker import BrokerSettings
from wire.receipts import event_key, result_key
from wire.schema import (
    ArtifactChunk,
    ArtifactInfo,
    ArtifactRef,
    CancelJob,
    ChunkRequest,
    DeviceInfo,
    DeviceStatus,
    Job,
    JobEvent,
    Receipt,
    ResultRecord,
    RunConfig,
    SchemaError,
    parse_message,
    utc_now,
)
from wire.signing import SignatureError, verify

__all__ = ["SimDevice"]

from testkit.sim_common import BURST, SimConfig, SimLoop, SimStats


@dataclass
class _Fetch:
    ref: ArtifactRef
    total: int
    hasher: Any
    next_index: int = 0
    held: dict[int, bytes] = field(default_factory=dict)
    last_progress: float = field(default_factory=time.monotonic)
    idle_rounds: int = 0


class SimDevice:
    """One simulated device; all its work happens in :class:`SimLoop` callbacks (never blocks)."""

    def __init__(
        self,
        device_id: str,
        tags: tuple[str, ...],
        cfg: SimConfig,
        loop: SimLoop,
        stats: SimStats,
        keys: dict,
    ):
        self.device_id, self.tags, self.cfg, self.loop, self.stats, self.keys = (
            device_id,
            tags,
            cfg,
            loop,
            stats,
            keys,
        )
        self.rng = random.Random(device_id)
        self.speed = self.rng.lognormvariate(0.0, 0.5)  # this board's factor on the fleet median
        self.info = DeviceInfo(
            device_id=device_id,
            hostname=device_id,
            board="simulated board",
            arch="aarch64",
            cpu_cores=4,
            ram_mb=4096.0,
            agent_version="sim",
            tags=tags,
        )
        self.started = time.monotonic()
        self.pending: dict[str, tuple[str, bytes, float, str]] = {}  # key -> topic, payload, sent, job
        self.seen_jobs: set[str] = set()
        self.queue: list[Job] = []
        self.job: Job | None = None
        self.fetch: _Fetch | None = None
        self.ready_artifacts: list[ArtifactRef] = []
        self.subscribed_once = False
        will = self._status("offline", "last-will").to_json().encode()
        self.settings = BrokerSettings(host=cfg.host, port=cfg.port, keepalive=cfg.keepalive)
        self.client = mqttlink.make_client(
            self.settings,
            device_id,
            persistent=True,
            manual_ack=False,
            max_inflight=cfg.inflight,
            will=(topics.status(device_id), will),
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        loop.attach(self.client)

    # ------------------------------------------------------------------ connection
    def connect(self) -> None:
        try:
            self.client.connect(**mqttlink.connect_kwargs(self.settings, persistent=True))
        except OSError:
            self.loop.call_later(1.0, self.connect)

    def _status(self, state: str, reason: str) -> DeviceStatus:
        return DeviceStatus(
            device_id=self.device_id,
            state=state,
            at=utc_now(),
            reason=reason,  # type: ignore[arg-type]
            facts=self.info if reason in ("birth", "last-will") else None,
            tags=self.tags,
            current_job=self.job.job_id if self.job else None,
            outbox_pending=len(self.pending),
            outbox_dropped=0,
            uptime_s=round(time.monotonic() - self.started, 1),
        )

    def _on_connect(self, client: Any, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        if reason_code.is_failure:
            return
        self.stats.connects += 1
        subs = [*topics.job_topics_for(self.device_id, self.tags), topics.device_chunks(self.device_id)]
        client.subscribe([(t, 1) for t in (*subs, topics.receipts(self.device_id))])
        self.publish_status("online", "birth")

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        self.stats.disconnects += 1
        if not getattr(self, "stopping", False):
            self.loop.call_later(1.0, self._reconnect)

    def _reconnect(self) -> None:
        try:
            self.client.reconnect()
        except OSError:
            self.loop.call_later(1.0, self._reconnect)

    def _on_subscribe(self, *_a: Any) -> None:
        if not self.subscribed_once:
            self.subscribed_once = True
            self.stats.subscribed += 1
            self.stats.online_at = time.time()

    def publish_status(self, state: str, reason: str) -> None:
        payload = self._status(state, reason).to_json().encode()
        self.client.publish(topics.status(self.device_id), payload, qos=1, retain=True)

    def heartbeat(self) -> None:
        if self.client.is_connected():
            self.publish_status("online", "heartbeat")

    # ------------------------------------------------------------------ outbox (until the receipt)
    def _send(self, topic: str, payload: bytes, key: str, job_id: str) -> None:
        self.pending[key] = (topic, payload, time.monotonic(), job_id)
        self.client.publish(topic, payload, qos=1)

    def resend_overdue(self) -> None:
        now = time.monotonic()
        for key, (topic, payload, sent, job_id) in list(self.pending.items()):
            if now - sent >= self.cfg.confirm_timeout_s:
                self.stats.resent += 1
                self._send(topic, payload, key, job_id)

    def _on_receipt(self, payload: bytes) -> None:
        receipt = Receipt.from_json(payload)
        self.stats.receipts += 1
        for key in (*receipt.committed, *(r.key for r in receipt.rejected)):
            entry = self.pending.pop(key, None)
            if entry is None:
                continue  # a receipt for a copy: already confirmed
            if key.startswith("r:"):
                tally = self.stats.tally(entry[3])
                tally.confirmed += 1
                tally.last_confirmed_at = time.time()
            else:
                self.stats.events_confirmed += 1
        self.stats.receipt_rejected += len(receipt.rejected)

    def _event(self, job: Job, state: str, detail: str = "", result_ids: tuple[str, ...] = ()) -> None:
        event = JobEvent(job.job_id, self.device_id, state, utc_now(), detail=detail, result_ids=result_ids)  # type: ignore[arg-type]
        key = event_key(event.job_id, event.state, event.at)
        self._send(topics.events(self.device_id), event.to_json().encode(), key, job.job_id)

    # ------------------------------------------------------------------ messages in
    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        if msg.topic == topics.receipts(self.device_id):
            self._on_receipt(msg.payload)
        elif msg.topic == topics.device_chunks(self.device_id):
            self._on_chunk(msg.payload)
        else:
            self._on_job_message(msg.payload)

    def _on_job_message(self, payload: bytes) -> None:
        try:
            message = parse_message(payload)
        except SchemaError:
            return
        if not isinstance(message, Job | CancelJob):
            return
        try:
            verify(message, self.keys)
        except SignatureError as exc:
            self.stats.rejected_jobs += 1
            if isinstance(message, Job):
                self._event(message, "rejected", str(exc))
            return
        if isinstance(message, CancelJob) or message.job_id in self.seen_jobs:
            return
        self.seen_jobs.add(message.job_id)
        tally = self.stats.tally(message.job_id)
        tally.received += 1
        tally.first_at = tally.first_at or time.time()
        self._event(message, "received")
        self.queue.append(message)
        if self.job is None:
            self._next_job()

    # ------------------------------------------------------------------ one job: fetch, "run", report
    def _next_job(self) -> None:
        if not self.queue:
            self.job = None
            return
        self.job, self.queue = self.queue[0], self.queue[1:]
        self.ready_artifacts = []
        self._fetch_next()

    def _fetch_next(self) -> None:
        job = self.job
        assert job is not None
        if len(self.ready_artifacts) == len(job.artifacts):
            self._run(job)
            return
        ref = job.artifacts[len(self.ready_artifacts)]
        self._event(job, "fetching", ref.name)
        total = max(1, -(-ref.size_bytes // self.cfg.chunk_size))
        self.fetch = _Fetch(ref, total, hashlib.sha256())
        self._request(())
        self.loop.call_later(self.cfg.chunk_timeout_s, self._check_fetch)

    def _request(self, indices: tuple[int, ...]) -> None:
        assert self.fetch is not None
        request = ChunkRequest(self.device_id, self.fetch.ref.sha256, indices, self.cfg.chunk_size)
        self.client.publish(topics.chunk_requests(self.device_id), request.to_json().encode(), qos=1)

    def _check_fetch(self) -> None:
        f = self.fetch
        if f is None or self.job is None:
            return
        if time.monotonic() - f.last_progress >= self.cfg.chunk_timeout_s:
            f.idle_rounds += 1
            if f.idle_rounds > self.cfg.chunk_retries:
                self._finish(self.job, "failed", f"{f.ref.name}: chunks missing after re-requests")
                return
            self.stats.chunk_rerequests += 1
            missing = tuple(i for i in range(f.next_index, f.total) if i not in f.held)
            self._request(missing)
            f.last_progress = time.monotonic()
        self.loop.call_later(1.0, self._check_fetch)

    def _on_chunk(self, payload: bytes) -> None:
        f = self.fetch
        try:
            chunk = ArtifactChunk.from_bytes(payload)
        except SchemaError:
            return
        if f is None or chunk.sha256 != f.ref.sha256 or chunk.total != f.total:
            return
        if chunk.index < f.next_index or chunk.index in f.held:
            return  # a copy
        f.held[chunk.index] = chunk.data
        f.last_progress, f.idle_rounds = time.monotonic(), 0
        while f.next_index in f.held:
            data = f.held.pop(f.next_index)
            f.hasher.update(data)
            self.stats.tally(self.job.job_id).bytes_fetched += len(data)  # type: ignore[union-attr]
            f.next_index += 1
        if f.next_index == f.total:
            self._fetched(f)

    def _fetched(self, f: _Fetch) -> None:
        job = self.job
        assert job is not None
        self.fetch = None
        self._event(job, "verifying", f.ref.name)
        if f.hasher.hexdigest() != f.ref.sha256:
            self.stats.sha_mismatch += 1
            self._finish(job, "failed", f"{f.ref.name}: sha256 mismatch")
            return
        self.ready_artifacts.append(f.ref)
        self._fetch_next()

    def _run(self, job: Job) -> None:
        self._event(job, "running", f"{len(job.artifacts)} artifact(s)")
        ids = []
        for ref in job.artifacts:
            for threads in job.settings.threads or (self.info.cpu_cores,):
                ids.append(self.publish_result(job.job_id, ref, threads))
        self._finish(job, "done", f"{len(ids)} ok", tuple(ids))

    def _finish(self, job: Job, state: str, detail: str, ids: tuple[str, ...] = ()) -> None:
        tally = self.stats.tally(job.job_id)
        if state == "done":
            tally.done += 1
        else:
            tally.failed += 1
        self._event(job, state, detail, ids)
        self.fetch = None
        self._next_job()

    def publish_result(self, job_id: str | None, ref: ArtifactRef | None, threads: int = 1) -> str:
        record = self.make_result(job_id, ref, threads)
        tally = self.stats.tally(job_id or BURST)
        tally.produced += 1
        self.stats.produced_ids.append(record.result_id)
        key = result_key(record.result_id)
        self._send(topics.results(self.device_id), record.to_json().encode(), key, job_id or BURST)
        return record.result_id

    def make_result(self, job_id: str | None, ref: ArtifactRef | None, threads: int) -> ResultRecord:
        """The real record shape; p50 = fleet median x board factor x artifact factor x noise."""
        ref = ref or ArtifactRef(name="burst.tflite", sha256="cd" * 32, size_bytes=1024, format="tflite")
        artifact_factor = 0.5 + int(ref.sha256[:4], 16) / 65535
        p50 = self.cfg.median_ms * self.speed * artifact_factor * self.rng.lognormvariate(0.0, 0.05)
        base = make_record(self.device_id, p50_ms=round(p50, 4), job_id=job_id, sha256=ref.sha256)
        now = utc_now()
        artifact = ArtifactInfo(
            name=ref.name,
            sha256=ref.sha256,
            format=ref.format,
            size_bytes=ref.size_bytes,
            precision=ref.precision,
            model=ref.model or "sim",
            variant=ref.variant,
        )
        config = RunConfig(
            runtime="litert" if ref.format == "tflite" else "onnxruntime",
            runtime_version="sim",
            threads=threads,
        )
        return replace(
            base, device=self.info, artifact=artifact, config=config, started_at=now, finished_at=now
        )
