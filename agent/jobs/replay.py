"""Replay protection for signed jobs: a captured job must not run again, nor on a device enrolled later.

A signed job is valid wherever a trusted key is; what keeps a captured payload from being useful:

* **expiry**: a job is refused once ``expires_at`` has passed (``fleet push`` always sets it).
* **issued before this device joined**: the agent writes its first start time once
  (``<data_dir>/identity.json``, :class:`DeviceIdentity`); a job created before it is refused.
* **seen once, never run again**: every job id of a *signed* job or cancel the agent took a decision on
  (ran, rejected, cancelled) is kept in ``<data_dir>/seen_jobs.json``, independently of the job store
  (which may be pruned). A job id there is ignored like a redelivery.

Clock skew: both time checks allow :data:`CLOCK_SKEW` (5 minutes): a job is expired when
``now - 5 min > expires_at``, and "issued before this device joined" when
``created_at < first_started_at - 5 min``.

Legacy jobs (no ``expires_at``, from an older collector) are accepted and logged; they are treated as
expiring :data:`LEGACY_MAX_AGE` (30 days) after their ``created_at``, so one older than that is refused.

The seen set is bounded by expiry, not by a count: an id is forgotten once its job would be refused as
expired anyway (its ``expires_at``, or ``created_at`` + 30 days for a legacy job, plus the skew); a
cancel's id (no expiry of its own) is kept 30 days from when it arrived. Only signed messages are
recorded, so its size is bounded by what the collector pushes, never by what anyone can publish.

Files are written atomically (tmp, fsync, rename). A seen-set write that fails (full disk) is logged,
kept in memory and retried with the next one; the job store still holds the job meanwhile.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from agent.jobs.store import _write_atomic
from wire.schema import CancelJob, Job
from wire.timestamps import Clock, parse_wire, system_clock, to_wire

log = logging.getLogger("edgebench.agent.replay")

__all__ = [
    "CLOCK_SKEW",
    "IDENTITY_FILE",
    "LEGACY_MAX_AGE",
    "SEEN_FILE",
    "DeviceIdentity",
    "ReplayGuard",
    "SeenJob",
]

CLOCK_SKEW = timedelta(minutes=5)
LEGACY_MAX_AGE = timedelta(days=30)
IDENTITY_FILE = "identity.json"
SEEN_FILE = "seen_jobs.json"
IDENTITY_SCHEMA_VERSION = 1
SEEN_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class DeviceIdentity:
    """Written once, at the agent's first start in this data directory."""

    first_started_at: str
    schema_version: int = IDENTITY_SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps({"schema_version": self.schema_version, "first_started_at": self.first_started_at})

    @classmethod
    def from_json(cls, text: str) -> DeviceIdentity:
        data = json.loads(text)
        identity = cls(str(data["first_started_at"]), int(data.get("schema_version", 1)))
        parse_wire(identity.first_started_at)
        return identity


@dataclass(frozen=True)
class SeenJob:
    job_id: str
    forget_after: str  # wire time: after this the job would be refused as expired anyway


class ReplayGuard:
    """The time checks and the durable seen set of one agent (its data directory)."""

    def __init__(self, data_dir: str | Path, *, clock: Clock = system_clock):
        self.dir = Path(data_dir)
        self.clock = clock
        self._lock = threading.Lock()
        self.identity = self._load_identity()
        self.first_started_at = parse_wire(self.identity.first_started_at)
        self._seen: dict[str, datetime] = self._load_seen()
        self.unsaved = False  # the last seen-set write failed; retried with the next one

    # ------------------------------------------------------------------ files
    def _load_identity(self) -> DeviceIdentity:
        path = self.dir / IDENTITY_FILE
        try:
            return DeviceIdentity.from_json(path.read_text())
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:  # stricter, never looser: start now
            log.error("%s unreadable (%s); the first start is recorded again as now", path, exc)
        identity = DeviceIdentity(to_wire(self.clock()))
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, identity.to_json())  # OSError: the agent cannot start (no state to trust)
        log.info("first start of this agent recorded: %s", identity.first_started_at)
        return identity

    def _load_seen(self) -> dict[str, datetime]:
        path = self.dir / SEEN_FILE
        try:
            data = json.loads(path.read_text())
            entries = [SeenJob(str(e["job_id"]), str(e["forget_after"])) for e in data["jobs"]]
            seen = {e.job_id: parse_wire(e.forget_after) for e in entries}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("%s unreadable (%s); starting an empty seen set (the job store still holds)", path, exc)
            return {}
        now = self.clock()
        return {job_id: t for job_id, t in seen.items() if t >= now}

    def _save(self) -> None:
        now = self.clock()
        self._seen = {job_id: t for job_id, t in self._seen.items() if t >= now}
        body = {
            "schema_version": SEEN_SCHEMA_VERSION,
            "jobs": [{"job_id": j, "forget_after": to_wire(t)} for j, t in sorted(self._seen.items())],
        }
        try:
            _write_atomic(self.dir / SEEN_FILE, json.dumps(body, separators=(",", ":")))
            self.unsaved = False
        except OSError as exc:
            if not self.unsaved:
                log.error("seen job ids not written (%s); kept in memory, retried with the next job", exc)
            self.unsaved = True

    # ------------------------------------------------------------------ decisions
    def seen(self, job_id: str) -> bool:
        with self._lock:
            forget_after = self._seen.get(job_id)
        return forget_after is not None and forget_after >= self.clock()

    def remember(self, message: Job | CancelJob) -> None:
        """Record a signed job's (or cancel's) id before anything is decided about it."""
        forget_after = self.clock() + LEGACY_MAX_AGE
        if isinstance(message, Job):
            try:
                forget_after = self._effective_expiry(message) + CLOCK_SKEW
            except ValueError:
                pass  # refused for its bad timestamps; kept like a cancel
        with self._lock:
            known = self._seen.get(message.job_id)
            if known is not None and known >= forget_after:
                return  # known already, and kept at least as long
            self._seen[message.job_id] = forget_after
            self._save()

    def refusal(self, message: Job | CancelJob) -> str | None:
        """Why ``message`` (signature already verified) must not run, or None. Cancels: always None."""
        if not isinstance(message, Job):
            return None
        try:
            created = parse_wire(message.created_at)
            expiry = self._effective_expiry(message)
        except ValueError as exc:
            return f"bad timestamp: {exc}"
        now = self.clock()
        if now - CLOCK_SKEW > expiry:
            what = message.expires_at or f"{message.created_at} + {LEGACY_MAX_AGE.days} days (no expires_at)"
            return f"expired at {what}"
        if created < self.first_started_at - CLOCK_SKEW:
            return (
                f"issued before this device joined the fleet (created {message.created_at}, "
                f"device first started {self.identity.first_started_at})"
            )
        if message.expires_at is None:
            log.warning(
                "job %s has no expires_at (an older collector): accepted, as if it expired %d days after "
                "its creation",
                message.job_id,
                LEGACY_MAX_AGE.days,
            )
        return None

    @staticmethod
    def _effective_expiry(job: Job) -> datetime:
        if job.expires_at is not None:
            return parse_wire(job.expires_at)
        return parse_wire(job.created_at) + LEGACY_MAX_AGE
