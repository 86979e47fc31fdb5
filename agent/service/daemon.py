"""The agent daemon: signed jobs in, artifacts fetched over MQTT, results out through the durable outbox.

Threads: paho's network thread (job messages -> :mod:`agent.service.intake` -> job store; chunk
assembly), the outbox pump (:mod:`agent.delivery.pump`), one worker that runs one job at a time, and a
heartbeat. Every :class:`~wire.schema.ResultRecord` and :class:`~wire.schema.JobEvent` is written to
the outbox (with its delivery key) before it is sent. SIGTERM: stop taking jobs, abort the running
measurement (its records say "aborted"), publish the offline status, flush what the broker takes, exit;
the rest stays in the outbox for the next start. No runtime is imported here: measurements run in
fresh worker processes (:mod:`agent.service.measurement`, ``agent.measure.bench`` with ``isolate=True``).

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
from collections import deque
from dataclasses import replace
from functools import partial

from agent.delivery.keeper import MessageKeeper
from agent.delivery.outbox import OutboxError, SqliteOutbox
from agent.delivery.room import RoomMakingOutbox
from agent.delivery.transport import MqttTransport, PayloadTooLarge
from agent.jobs.cache import ArtifactCache
from agent.jobs.chunk_fetch import ArtifactFetcher
from agent.jobs.replay import ReplayGuard
from agent.jobs.run import JobRun, Runner
from agent.jobs.store import JobStore
from agent.service.config import AgentConfig
from agent.service.intake import JobIntake
from agent.service.measurement import run_measurement
from wire import topics
from wire.errors import EdgebenchError
from wire.receipts import event_key, result_key
from wire.schema import ChunkRequest, DeviceInfo, DeviceStatus, Job, JobEvent, ResultRecord, utc_now
from wire.signing import SignatureError, load_trusted_keys
from wire.timestamps import Clock, system_clock

log = logging.getLogger("edgebench.agent")

__all__ = ["AgentError", "AgentService", "Runner", "run_measurement"]


class AgentError(EdgebenchError):
    """The agent cannot start (keys, data directory) or stop cleanly."""


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
            lambda topic, payload, key=None: self.transport.enqueue(topic, payload, key=key),
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
        self._metrics = None  # the Prometheus endpoint (agent.service.metrics) when [metrics] port is set

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> AgentService:
        """Open the data directory, wire the parts together, connect, start the worker and heartbeat."""
        c = self.config
        self._open_storage()
        if c.metrics.port:  # prometheus_client is imported only then
            from agent.service.metrics import MetricsError, start_metrics

            try:
                self._metrics = start_metrics(self)
            except MetricsError as exc:
                raise AgentError(str(exc)) from None
            log.info("metrics on %s", self._metrics.url)
        if not self.trusted:
            log.warning("no trusted signing keys configured: every job will be rejected")
        if self.device is None:
            from agent.probes.facts import device_info

            self.device = device_info(c.device_id, c.tags)
        recovered = self.jobs.recover()
        self.intake = self._make_intake()
        self.transport = self._make_transport()
        self.fetcher = self._make_fetcher()
        self.job_run = self._make_job_run()
        for entry in recovered:
            self._event(entry.job_id, entry.state, entry.detail)
            self.job_run.redeliver(entry.job_id)  # records a kill -9 caught on their way to the outbox
        self.transport.subscribe(
            [*topics.job_topics_for(self.device_id, c.tags), topics.device_chunks(self.device_id)]
        )
        self.transport.start()
        self._start_threads()
        log.info(
            "agent %s started (broker %s:%s, data %s)",
            self.device_id,
            c.broker.host,
            c.broker.port,
            c.data_dir,
        )
        return self

    def _open_storage(self) -> None:
        """Trusted keys, artifact cache, outbox, job store and replay guard, all under the data directory."""
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

    def _make_intake(self) -> JobIntake:
        return JobIntake(
            device_id=self.device_id,
            tags=self.config.tags,
            jobs=self.jobs,
            trusted=self.trusted,
            replay=self.replay,
            lock=self._lock,
            running_job=lambda: self.current_job,
            abort=self._abort,
            event=self._event,
            error=self._error,
            wake=self._wake.set,
        )

    def _make_transport(self) -> MqttTransport:
        c = self.config
        will = self._status("offline", "last-will").to_json().encode()
        return MqttTransport(
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

    def _make_fetcher(self) -> ArtifactFetcher:
        jobs = self.config.jobs
        return ArtifactFetcher(
            self.cache,
            self.device_id,
            self._send_chunk_request,
            chunk_size=jobs.chunk_size,
            chunk_timeout_s=jobs.chunk_timeout_s,
            retries=jobs.chunk_retries,
            max_artifact_bytes=int(jobs.max_artifact_mb * 2**20),
        )

    def _make_job_run(self) -> JobRun:
        return JobRun(
            jobs=self.jobs,
            cache=self.cache,
            fetcher=self.fetcher,
            runner=self.runner,
            device=lambda: self.device,  # type: ignore[arg-type,return-value]
            deliver=self._deliver,
            set_state=self._set,
            progress=lambda job_id, name, p: self._event(job_id, "fetching", name, progress=p),
        )

    def _start_threads(self) -> None:
        """The job worker (one job at a time) and the heartbeat, both daemon threads."""
        for target, name in ((self._work, "job-worker"), (self._heartbeat, "heartbeat")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            if target == self._work:
                self._worker = thread
            thread.start()
            self._threads.append(thread)

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
        if self._metrics is not None:
            self._metrics.close()
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
            self.intake.on_message(payload)

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
            payload, key = record.to_json().encode(), result_key(record.result_id)
            self.keeper.store(topic, payload, f"result {record.result_id}", key)
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
            key = event_key(event.job_id, event.state, event.at)
            self.keeper.store(topics.events(self.device_id), event.to_json().encode(), what, key)
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
