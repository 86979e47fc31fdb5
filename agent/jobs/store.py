"""The device's job store: every job it was sent, with its state, persisted across restarts.

One JSON file per job in ``<data_dir>/jobs/`` (written atomically: tmp, fsync, rename). States
follow :data:`wire.schema.JobState`: received -> fetching -> verifying -> running -> done, or
failed / rejected / cancelled / aborted with a reason. While a job runs, each measured artifact is
checkpointed in its entry (:attr:`JobEntry.measured`, :attr:`JobEntry.result_ids`, and the records
themselves in :attr:`JobEntry.unsent` until the outbox has them: :mod:`agent.jobs.run`).

:meth:`JobStore.recover` runs at start-up: a job that was fetching, verifying or running when the agent
died (kill -9, power cut) is queued again and resumes with the artifacts not yet measured; after
:data:`MAX_RESUMES` such restarts in one job it is marked aborted instead (an artifact that takes the
agent down must not do so forever).

A write that fails for space first asks ``make_room`` (the artifact cache) and tries again; one that
still fails never stops the service: the state is kept in memory, the job is listed in
:attr:`JobStore.unsaved` and written again by :meth:`JobStore.save_unsaved`. If the agent dies before
that, the file on disk is one step behind: at worst an artifact is measured again (new result ids).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from wire.errors import EdgebenchError
from wire.schema import Job, SchemaError, utc_now

log = logging.getLogger("edgebench.agent.jobs")

__all__ = ["ACTIVE", "FINAL", "MAX_RESUMES", "JobEntry", "JobStore", "JobStoreError", "target_matches"]

FINAL = frozenset({"done", "failed", "rejected", "cancelled", "aborted"})
ACTIVE = frozenset({"fetching", "verifying", "running"})
MAX_RESUMES = 3
ENTRY_SCHEMA_VERSION = 2  # 2: measured, unsent, resumes


class JobStoreError(EdgebenchError):
    """The job directory is unusable."""


@dataclass(frozen=True)
class JobEntry:
    job_id: str
    state: str
    updated_at: str
    received_at: str
    job: Job | None = None  # None when the message itself could not be trusted or decoded
    detail: str = ""
    result_ids: tuple[str, ...] = ()  # every result stored for this job so far (across restarts)
    measured: tuple[int, ...] = ()  # indices into job.artifacts whose measurement finished
    unsent: tuple[str, ...] = ()  # result records (JSON) measured but not yet known to be in the outbox
    resumes: int = 0  # restarts of the agent while this job was active
    schema_version: int = ENTRY_SCHEMA_VERSION

    def to_json(self) -> str:
        body = {
            "schema_version": self.schema_version,
            "job_id": self.job_id,
            "state": self.state,
            "updated_at": self.updated_at,
            "received_at": self.received_at,
            "detail": self.detail,
            "result_ids": list(self.result_ids),
            "measured": list(self.measured),
            "unsent": list(self.unsent),
            "resumes": self.resumes,
            "job": self.job.to_dict() if self.job is not None else None,
        }
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> JobEntry:
        data = json.loads(text)
        job = Job.from_dict(data["job"]) if data.get("job") is not None else None
        return cls(
            job_id=data["job_id"],
            state=data["state"],
            updated_at=data["updated_at"],
            received_at=data["received_at"],
            job=job,
            detail=data.get("detail", ""),
            result_ids=tuple(data.get("result_ids", ())),
            measured=tuple(int(i) for i in data.get("measured", ())),
            unsent=tuple(str(r) for r in data.get("unsent", ())),
            resumes=int(data.get("resumes", 0)),
            schema_version=int(data.get("schema_version", 1)),
        )


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def target_matches(target: str, device_id: str, tags: tuple[str, ...]) -> bool:
    if target == "all":
        return True
    kind, _, name = target.partition(":")
    return (kind == "device" and name == device_id) or (kind == "tag" and name in tags)


class JobStore:
    def __init__(self, directory: Path, *, make_room: Callable[[int, str], int] | None = None):
        self.dir = Path(directory)
        self.make_room = make_room  # (need_bytes, what) -> bytes freed; asked when a write meets ENOSPC
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JobStoreError(f"cannot create job directory {self.dir}: {exc}") from None
        self._lock = threading.Lock()
        self._entries: dict[str, JobEntry] = {}
        self.unreadable: list[str] = []
        self.unsaved: set[str] = set()  # job ids whose last state is only in memory (write failed)
        for path in sorted(self.dir.glob("*.json")):
            try:
                entry = JobEntry.from_json(path.read_text())
            except (OSError, ValueError, KeyError, SchemaError) as exc:
                self.unreadable.append(f"{path.name}: {exc}")
                continue
            self._entries[entry.job_id] = entry

    def _write(self, entry: JobEntry) -> bool:
        """Atomic write (tmp, fsync, rename); False (logged, kept in :attr:`unsaved`) if it failed.

        No space: ask ``make_room`` (the artifact cache) and try again while it frees something."""
        path = self.dir / f"{entry.job_id}.json"
        text = entry.to_json()
        for _ in range(4):
            try:
                _write_atomic(path, text)
            except OSError as exc:
                no_space = exc.errno == errno.ENOSPC and self.make_room is not None
                if no_space and self.make_room(2 * len(text), "the job state") > 0:  # type: ignore[misc]
                    continue
                if entry.job_id not in self.unsaved:
                    log.error(
                        "job %s: state %r not written (%s); kept in memory", entry.job_id, entry.state, exc
                    )
                self.unsaved.add(entry.job_id)
                return False
            self.unsaved.discard(entry.job_id)
            return True
        self.unsaved.add(entry.job_id)
        return False

    def save_unsaved(self) -> int:
        """Write again every job whose last write failed; returns how many are still unsaved."""
        with self._lock:
            for job_id in sorted(self.unsaved):
                self._write(self._entries[job_id])
            return len(self.unsaved)

    def get(self, job_id: str) -> JobEntry | None:
        with self._lock:
            return self._entries.get(job_id)

    def add(self, job_id: str, job: Job | None, state: str = "received", detail: str = "") -> JobEntry | None:
        """Store a newly seen job; None if this job id is already known (a redelivery)."""
        now = utc_now()
        entry = JobEntry(job_id, state, now, now, job, detail)
        with self._lock:
            if job_id in self._entries:
                return None
            self._entries[job_id] = entry
            self._write(entry)
        return entry

    def update(
        self, job_id: str, state: str, detail: str = "", result_ids: tuple[str, ...] | None = None
    ) -> JobEntry:
        with self._lock:
            entry = self._entries[job_id]
            entry = replace(
                entry,
                state=state,
                detail=detail,
                updated_at=utc_now(),
                result_ids=entry.result_ids if result_ids is None else result_ids,
            )
            self._entries[job_id] = entry
            self._write(entry)
        return entry

    def next_queued(self) -> JobEntry | None:
        """The oldest job waiting to run."""
        with self._lock:
            queued = [e for e in self._entries.values() if e.state == "received" and e.job is not None]
        return min(queued, key=lambda e: (e.received_at, e.job_id), default=None)

    def entries(self) -> list[JobEntry]:
        with self._lock:
            return sorted(self._entries.values(), key=lambda e: (e.received_at, e.job_id))

    def checkpoint(self, job_id: str, **changes: Any) -> JobEntry:
        """Record progress without changing the state: ``measured``, ``result_ids``, ``unsent``."""
        unknown = set(changes) - {"measured", "result_ids", "unsent"}
        if unknown:
            raise TypeError(f"checkpoint() got unexpected fields {sorted(unknown)}")
        with self._lock:
            entry = replace(self._entries[job_id], updated_at=utc_now(), **changes)
            self._entries[job_id] = entry
            self._write(entry)
        return entry

    def recover(self) -> list[JobEntry]:
        """After a restart: re-queue every interrupted job (it resumes with its unmeasured artifacts);
        one interrupted :data:`MAX_RESUMES` times is marked aborted. Returns the changed entries."""
        changed = []
        for entry in self.entries():
            if entry.state not in ACTIVE:
                continue
            resumes = entry.resumes + 1
            if entry.job is None or resumes > MAX_RESUMES:
                why = "no job message kept" if entry.job is None else f"agent restarted {entry.resumes} times"
                detail = f"agent stopped while the job was {entry.state} ({why}); not resumed"
                changed.append(self.update(entry.job_id, "aborted", detail, None))
                continue
            total = len(entry.job.artifacts)
            done = len(set(entry.measured))
            detail = f"agent restarted while {entry.state}; resuming: {done} of {total} artifact(s) measured"
            with self._lock:
                self._entries[entry.job_id] = replace(entry, resumes=resumes)
            changed.append(self.update(entry.job_id, "received", detail))
        return changed

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for entry in self.entries():
            out[entry.state] = out.get(entry.state, 0) + 1
        return out
