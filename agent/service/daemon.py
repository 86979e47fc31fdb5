"""The agent daemon: signed jobs in, artifacts fetched over MQTT, results out through the durable outbox.

Threads: paho's network thread (messages -> job store / chunk assembly), the outbox pump
(:mod:`agent.delivery.transport`), one worker that runs one job at a time, and a heartbeat. Every
:class:`~wire.schema.ResultRecord` and :class:`~wire.schema.JobEvent` is written to the outbox
before it is sent. SIGTERM: stop taking jobs, abort the running measurement (its records say
"aborted"), publish the offline status, flush what the broker takes, exit; the rest stays in the
outbox for the next start. No runtime is imported here: measurements run in fresh worker processes
(``agent.measure.bench`` with ``isolate=True``).

A full disk stops nothing and loses nothing stored: every result and event goes through
:class:`agent.delivery.keeper.MessageKeeper`, which holds what the outbox cannot take and retries (the worker
waits, so no new result is made meanwhile); before that, the artifact cache gives way (least recently
used models, never the running job's: :mod:`agent.jobs.cache`, :mod:`agent.delivery.room`). A job that a
kill -9 or power cut interrupted resumes at the next start with the artifacts it had not measured
(:mod:`agent.jobs.run`).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections import deque
from dataclasses import replace
from functools import partial
from pathlib import Path

from agent.delivery.keeper import MessageKeeper
from agent.delivery.outbox import OutboxError, SqliteOutbox
from agent.delivery.room import RoomMakingOutbox
from agent.delivery.transport import MqttTransport, PayloadTooLarge
from agent.jobs.cache import ArtifactCache
from agent.jobs.chunk_fetch import ArtifactFetcher
from agent.jobs.replay import ReplayGuard
from agent.jobs.run import JobRun, Runner
from agent.jobs.store import ACTIVE, JobStore, target_matches
from agent.service.config import AgentConfig
from wire import topics
from wire.codec import load_json
from wire.errors import EdgebenchError
from wire.schema import (
    ArtifactInfo,
    ArtifactRef,
    CancelJob,
    ChunkRequest,
    DeviceInfo,
    DeviceStatus,
    Job,
    JobEvent,
    ResultRecord,
    SchemaError,
    parse_message,
    utc_now,
)
from wire.signing import SignatureError, load_trusted_keys, verify
from wire.timestamps import Clock, system_clock

log = logging.getLogger("edgebench.agent")

__all__ = ["AgentError", "AgentService", "Runner", "run_measurement"]


class AgentError(EdgebenchError):
    """The agent cannot start (keys, data directory) or stop cleanly."""


def run_measurement(
    path: Path,
    job: Job,
    ref: ArtifactRef,
    device: DeviceInfo,
    cancel: threading.Event,
    *,
    max_threads: int = 0,
) -> list[ResultRecord]:
    """The one place the service calls the measurement engine (imported only when a job runs).

    ``max_threads`` is the device's own limit ([jobs] max_threads): a job asking for more threads, or
    for the runtime's default, runs with at most that many.
    """
    from agent.measure.bench import BenchOptions, run_benchmark

    artifact = ArtifactInfo(
        name=ref.name,
        sha256=ref.sha256,
        format=ref.format,
        size_bytes=ref.size_bytes,
        precision=ref.precision,
        model=ref.model,
        variant=ref.variant,
    )
    options = BenchOptions.from_settings(job.settings)
    if max_threads > 0:
        capped = tuple(sorted({min(t, max_threads) for t in options.threads})) or (max_threads,)
        options = replace(options, threads=capped)
    return run_benchmark(path, options, device=device, artifact=artifact, job_id=job.job_id, cancel=cancel)


class AgentService:
    def __init__(self, config: AgentConfig, *, device: DeviceInfo | None = None,
                 runner: Runner | None = None, clock: Clock = system_clock):  # fmt: skip
        self.config, self.clock = config, clock  # clock: the replay guard's (agent.jobs.replay)
        self.device_id = config.device_id
        self.device = device
        self.runner = runner or partial(run_measurement, max_threads=config.jobs.max_threads)
        self.stopping = threading.Event()
        self.errors: deque[str] = deque(maxlen=200)
        self.current_job: str | None = None
        self.undeliverable = 0  # results that could not even be stored (payload limit)
        self._worker: threading.Thread | None = None
        self.keeper = MessageKeeper(  # every result and event goes through it (full disk: hold, retry)
            lambda topic, payload: self.transport.enqueue(topic, payload),
            self._publish_direct,
            stopping=self.stopping,
            may_wait=lambda: threading.current_thread() is self._worker,
            on_error=self._error,
        )
        self._wake = threading.Event()
        self._cancel: threading.Event | None = None
        self._cancel_reason = ""
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._started = time.monotonic()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> AgentService:
        c = self.config
        try:
            c.data_dir.mkdir(parents=True, exist_ok=True)
            self.trusted = load_trusted_keys(c.jobs.trusted_keys)
            # disk room: cached models go first (LRU, never the running job's), then the keeper holds
            self.cache = ArtifactCache(c.cache_dir, int(c.jobs.cache_mb * 2**20))
            self.cache.clear_partials()
            box = SqliteOutbox(c.outbox_path, c.outbox.max_rows, c.broker.max_payload_kb * 1024)
            self.outbox = RoomMakingOutbox(box, self.cache.free_for)
            self.jobs = JobStore(c.jobs_dir, make_room=self.cache.free_for)
            self.replay = ReplayGuard(c.data_dir, clock=self.clock)  # first start, seen job ids
        except (OSError, SignatureError, OutboxError) as exc:
            raise AgentError(str(exc)) from None
        if not self.trusted:
            log.warning("no trusted signing keys configured: every job will be rejected")
        if self.device is None:
            from agent.probes.facts import device_info

            self.device = device_info(c.device_id, c.tags)
        recovered = self.jobs.recover()
        will = self._status("offline", "last-will").to_json().encode()
        self.transport = MqttTransport(
            c.broker,
            c.client_id,
            outbox=self.outbox,
            inflight=c.outbox.inflight,
            will=(topics.status(self.device_id), will),
            on_message=self._on_message,
            on_connected=self._on_connected,
            on_error=self.errors.append,
            receipt_topic=topics.receipts(self.device_id) if c.outbox.receipts else None,
            confirm_timeout_s=c.outbox.confirm_timeout_s,
            confirm_timeout_max_s=c.outbox.confirm_timeout_max_s,
        )
        self.fetcher = ArtifactFetcher(
            self.cache,
            self.device_id,
            self._send_chunk_request,
            chunk_size=c.jobs.chunk_size,
            chunk_timeout_s=c.jobs.chunk_timeout_s,
            retries=c.jobs.chunk_retries,
            max_artifact_bytes=int(c.jobs.max_artifact_mb * 2**20),
        )
        self.job_run = JobRun(
            jobs=self.jobs,
            cache=self.cache,
            fetcher=self.fetcher,
            runner=self.runner,
            device=lambda: self.device,  # type: ignore[arg-type,return-value]
            deliver=self._deliver,
            set_state=self._set,
            progress=lambda job_id, name, p: self._event(job_id, "fetching", name, progress=p),
        )
        for entry in recovered:
            self._event(entry.job_id, entry.state, entry.detail)
            self.job_run.redeliver(entry.job_id)  # records a kill -9 caught on their way to the outbox
        self.transport.subscribe(
            [*topics.job_topics_for(self.device_id, c.tags), topics.device_chunks(self.device_id)]
        )
        self.transport.start()
        for target, name in ((self._work, "job-worker"), (self._heartbeat, "heartbeat")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            if target == self._work:
                self._worker = thread
            thread.start()
            self._threads.append(thread)
        log.info(
            "agent %s started (broker %s:%s, data %s)",
            self.device_id,
            c.broker.host,
            c.broker.port,
            c.data_dir,
        )
        return self

    def stop(self, flush_timeout_s: float = 5.0, join_timeout_s: float = 60.0) -> bool:
        """Stop taking jobs, abort the running one, say offline, flush. True if the outbox emptied."""
        self.stopping.set()
        self._abort("shutdown")
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=join_timeout_s)
        self.keeper.store_held()  # what the network thread could not store: last chance
        if self.transport.connected.is_set():
            try:
                status = self._status("offline", "shutdown").to_json().encode()
                self.transport.publish(topics.status(self.device_id), status, retain=True).wait(2.0)
            except Exception as exc:
                log.warning("could not publish the offline status: %s", exc)
        flushed = self.transport.stop(flush_timeout_s=flush_timeout_s)
        stats = self.outbox.stats()
        if stats.pending:
            log.warning("%d message(s) stay in the outbox for the next start", stats.pending)
        self.outbox.close()
        return flushed

    def run_forever(self) -> int:
        """Start, wait for SIGTERM/SIGINT, stop. Returns the number of messages left in the outbox."""
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        self.start()
        while not stop.wait(1.0):
            pass
        log.info("stopping: no new jobs, aborting the running measurement, flushing the outbox")
        self.stop()
        return self.outbox_stats_after_close()

    def outbox_stats_after_close(self) -> int:
        box = SqliteOutbox(self.config.outbox_path)
        try:
            return box.stats().pending
        finally:
            box.close()

    # ------------------------------------------------------------------ messages in (network thread)
    def _on_connected(self) -> None:
        status = self._status("online", "birth").to_json().encode()
        self.transport.publish(topics.status(self.device_id), status, retain=True)

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == topics.device_chunks(self.device_id):
            self.fetcher.on_chunk(payload)
        else:
            self._on_job_message(payload)

    def _on_job_message(self, payload: bytes) -> None:
        try:
            message = parse_message(payload)
        except SchemaError as exc:
            job_id = _loose_job_id(payload)
            self._error(f"malformed job message: {exc}")
            if job_id and self.jobs.add(job_id, None, "rejected", f"malformed: {exc}"):
                self._event(job_id, "rejected", f"malformed job message: {exc}")
            return
        if isinstance(message, CancelJob):
            self._on_cancel(message)
        elif isinstance(message, Job):
            self._on_job(message)
        else:
            self._error(f"unexpected {type(message).__name__} on a job topic")

    def _check(self, message: Job | CancelJob) -> str | None:
        try:
            verify(message, self.trusted)
        except SignatureError as exc:
            return str(exc)
        self.replay.remember(message)  # signed: never run twice, whatever is decided below
        if isinstance(message, Job) and not target_matches(message.target, self.device_id, self.config.tags):
            return f"target {message.target!r} is not this device"
        return self.replay.refusal(message)  # expired, issued before this device joined

    def _on_job(self, job: Job) -> None:
        if self.jobs.get(job.job_id) is not None or self.replay.seen(job.job_id):
            return  # redelivery or replay of a job already seen (the job store may have been pruned)
        reason = self._check(job)
        if reason is not None:
            self.jobs.add(job.job_id, job, "rejected", reason)
            self._error(f"job {job.job_id} rejected: {reason}")
            self._event(job.job_id, "rejected", reason)
            return
        self.jobs.add(job.job_id, job)
        self._event(job.job_id, "received", f"{len(job.artifacts)} artifact(s)")
        self._wake.set()

    def _on_cancel(self, cancel: CancelJob) -> None:
        reason = self._check(cancel)
        if reason is not None:
            self._error(f"cancel of job {cancel.job_id} ignored: {reason}")
            return
        with self._lock:
            entry = self.jobs.get(cancel.job_id)
            if entry is None:
                self.jobs.add(cancel.job_id, None, "cancelled", "cancelled before it arrived")
            elif entry.state == "received":
                self.jobs.update(cancel.job_id, "cancelled", "cancelled before it started")
                self._event(cancel.job_id, "cancelled", "cancelled before it started")
            elif entry.state in ACTIVE and self.current_job == cancel.job_id:
                self._abort("cancelled")

    # ------------------------------------------------------------------ the worker
    def _work(self) -> None:
        while not self.stopping.is_set():
            self.keeper.store_held()
            if self.jobs.unsaved:
                self.jobs.save_unsaved()
            entry = self.jobs.next_queued()
            if entry is None or entry.job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self._run_job(entry.job)

    def _run_job(self, job: Job) -> None:
        cancel = threading.Event()
        with self._lock:
            if self.jobs.get(job.job_id).state != "received":  # type: ignore[union-attr]
                return
            self._cancel, self._cancel_reason, self.current_job = cancel, "", job.job_id
        timer = threading.Timer(self.config.jobs.max_job_s, self._abort, args=("timeout",))
        timer.daemon = True
        timer.start()
        try:  # fetch and measure what the job's entry does not list as measured (agent.jobs.run)
            outcome = self.job_run.run(job, cancel)
            state, detail, result_ids = outcome.state, outcome.detail, outcome.result_ids
        finally:
            timer.cancel()
        if cancel.is_set():
            state, detail = {
                "cancelled": ("cancelled", "cancelled while running"),
                "timeout": ("failed", f"exceeded max_job_s ({self.config.jobs.max_job_s:g} s)"),
            }.get(self._cancel_reason, ("aborted", "agent shutting down"))
        with self._lock:
            self.jobs.update(job.job_id, state, detail, tuple(result_ids))
            self.current_job, self._cancel = None, None
        self._event(job.job_id, state, detail, tuple(result_ids))

    def _abort(self, reason: str) -> None:
        cancel = self._cancel
        if cancel is not None and not cancel.is_set():
            self._cancel_reason = reason
            cancel.set()

    def _set(self, job: Job, state: str, detail: str = "") -> None:
        self.jobs.update(job.job_id, state, detail)
        self._event(job.job_id, state, detail)

    # ------------------------------------------------------------------ messages out
    def _deliver(self, record: ResultRecord) -> bool:
        """Result -> outbox (durable) -> broker. Too large: retried once without raw samples."""
        topic = topics.results(self.device_id)
        try:
            self.keeper.store(topic, record.to_json().encode(), f"result {record.result_id}")
            return True
        except (PayloadTooLarge, OutboxError) as exc:
            if record.latency is not None and record.latency.samples_ms:
                log.warning("result %s too large (%s); sending it without raw samples", record.result_id, exc)
                return self._deliver(replace(record, latency=replace(record.latency, samples_ms=None)))
            self.undeliverable += 1
            self._error(f"result {record.result_id} cannot be sent: {exc}")
            return False

    def _event(self, job_id: str, state: str, detail: str = "", result_ids=(), progress=None) -> None:
        event = JobEvent(
            job_id=job_id,
            device_id=self.device_id,
            state=state,  # type: ignore[arg-type]
            at=utc_now(),
            detail=detail[:500],
            result_ids=tuple(result_ids),
            progress=progress,
        )
        what = f"job event {job_id} {state}"
        try:
            self.keeper.store(topics.events(self.device_id), event.to_json().encode(), what)
        except (PayloadTooLarge, OutboxError) as exc:
            self._error(f"{what} not stored: {exc}")

    def _publish_direct(self, topic: str, payload: bytes) -> None:
        if not self.transport.connected.is_set():
            raise OutboxError("not connected to the broker")
        self.transport.publish(topic, payload).wait(5.0)  # raises unless PUBACKed

    def _send_chunk_request(self, request: ChunkRequest) -> None:
        self.transport.publish(topics.chunk_requests(self.device_id), request.to_json().encode())

    def _status(self, state: str, reason: str) -> DeviceStatus:
        stats = self.outbox.stats()
        return DeviceStatus(
            device_id=self.device_id,
            state=state,  # type: ignore[arg-type]
            at=utc_now(),
            reason=reason,
            facts=self.device if reason in ("birth", "last-will") else None,
            tags=self.config.tags,
            current_job=self.current_job,
            outbox_pending=stats.pending + self.keeper.held,
            outbox_dropped=stats.dropped,
            uptime_s=round(time.monotonic() - self._started, 1),
        )

    def _heartbeat(self) -> None:
        while not self.stopping.wait(self.config.heartbeat.interval_s):
            if self.transport.connected.is_set():
                status = self._status("online", "heartbeat").to_json().encode()
                try:
                    self.transport.publish(topics.status(self.device_id), status, retain=True)
                except Exception as exc:
                    self._error(f"heartbeat: {exc}")

    def _error(self, message: str) -> None:
        log.error("%s", message)
        self.errors.append(message)


def _loose_job_id(payload: bytes) -> str | None:
    try:
        data = load_json(payload)  # bounded depth and size: never recurses on hostile nesting
        return str(uuid.UUID(data["job_id"]))
    except (SchemaError, ValueError, TypeError, KeyError, AttributeError):
        return None
