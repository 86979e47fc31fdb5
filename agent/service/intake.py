"""Job messages in (paho's network thread): a signed :class:`~wire.schema.Job` or
:class:`~wire.schema.CancelJob` is verified against the trusted keys, checked against replays and the
device's target, and stored in the job store (the worker runs it); anything else is refused with a
``rejected`` job event when the message names a job."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from agent.jobs.replay import ReplayGuard
from agent.jobs.store import ACTIVE, JobStore, target_matches
from wire.codec import load_json
from wire.schema import CancelJob, Job, SchemaError, parse_message
from wire.signing import SignatureError, verify

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["JobIntake"]

EventSink = Callable[[str, str, str], None]  # (job_id, state, detail) -> a JobEvent to the outbox


class JobIntake:
    def __init__(
        self,
        *,
        device_id: str,
        tags: Sequence[str],
        jobs: JobStore,
        trusted: Mapping[str, Ed25519PublicKey],
        replay: ReplayGuard,
        lock: threading.Lock,
        running_job: Callable[[], str | None],
        abort: Callable[[str], None],
        event: EventSink,
        error: Callable[[str], None],
        wake: Callable[[], None],
    ):
        self.device_id, self.tags = device_id, tags
        self.jobs, self.trusted, self.replay = jobs, trusted, replay
        self._lock = lock  # the service's: a cancel and the worker's state changes do not interleave
        self._running_job = running_job
        self._abort = abort
        self._event = event
        self._error = error
        self._wake = wake

    def on_message(self, payload: bytes) -> None:
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

    def _refusal(self, message: Job | CancelJob) -> str | None:
        try:
            verify(message, self.trusted)
        except SignatureError as exc:
            return str(exc)
        self.replay.remember(message)  # signed: never run twice, whatever is decided below
        if isinstance(message, Job) and not target_matches(message.target, self.device_id, self.tags):
            return f"target {message.target!r} is not this device"
        return self.replay.refusal(message)  # expired, issued before this device joined

    def _on_job(self, job: Job) -> None:
        if self.jobs.get(job.job_id) is not None or self.replay.seen(job.job_id):
            return  # redelivery or replay of a job already seen (the job store may have been pruned)
        reason = self._refusal(job)
        if reason is not None:
            self.jobs.add(job.job_id, job, "rejected", reason)
            self._error(f"job {job.job_id} rejected: {reason}")
            self._event(job.job_id, "rejected", reason)
            return
        self.jobs.add(job.job_id, job)
        self._event(job.job_id, "received", f"{len(job.artifacts)} artifact(s)")
        self._wake()

    def _on_cancel(self, cancel: CancelJob) -> None:
        reason = self._refusal(cancel)
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
            elif entry.state in ACTIVE and self._running_job() == cancel.job_id:
                self._abort("cancelled")


def _loose_job_id(payload: bytes) -> str | None:
    try:
        data = load_json(payload)  # bounded depth and size: never recurses on hostile nesting
        return str(uuid.UUID(data["job_id"]))
    except (SchemaError, ValueError, TypeError, KeyError, AttributeError):
        return None
