"""One job's artifacts, fetched and measured, resumable across an agent restart (kill -9, power cut).

:class:`JobRun` is the service's worker body for one job. It measures only the artifacts the job's
entry does not list as measured (:attr:`agent.jobs.store.JobEntry.measured`), so a job that the agent
restarted in the middle (:meth:`agent.jobs.store.JobStore.recover` queues it again) goes on where it stopped
and no artifact is measured twice. Per measured artifact, in this order:

1. checkpoint (one atomic job-file write): the artifact is measured, its result ids join the job's,
   and the records themselves are kept in ``unsent``;
2. every record into the outbox (through the keeper, so a full disk holds, never loses);
3. checkpoint: ``unsent`` cleared, only the ids that were stored kept.

An agent killed between 1 and 3 finds the records in ``unsent`` at the next start and stores them again
(:meth:`JobRun.redeliver`): same result ids, so a copy that was already sent is absorbed by the
collector (it stores each result id once). The job's final event lists every result id, those from
before the restart too.

A resumed job that expired meanwhile fails, naming each artifact not measured; one whose artifact left
the cache fetches it again (failing with the reason if that is not possible). The running job's
artifacts are pinned in the cache, so making room on a full disk never evicts them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from agent.jobs.cache import ArtifactCache, DeliveryError
from agent.jobs.chunk_fetch import ArtifactFetcher
from agent.jobs.store import JobStore
from wire.schema import ArtifactRef, DeviceInfo, Job, ResultRecord, SchemaError, utc_now

log = logging.getLogger("edgebench.agent")

__all__ = ["JobRun", "RunOutcome", "Runner", "summarize"]

Runner = Callable[[Path, Job, ArtifactRef, DeviceInfo, threading.Event], list[ResultRecord]]
UNSENT_MAX_BYTES = 256 * 1024  # a record kept in the job file above this keeps no raw samples


@dataclass(frozen=True)
class RunOutcome:
    state: str
    detail: str
    result_ids: tuple[str, ...]  # every result stored for the job, across restarts


class JobRun:
    def __init__(
        self,
        *,
        jobs: JobStore,
        cache: ArtifactCache,
        fetcher: ArtifactFetcher,
        runner: Runner,
        device: Callable[[], DeviceInfo],
        deliver: Callable[[ResultRecord], bool],
        set_state: Callable[[Job, str, str], None],
        progress: Callable[[str, str, float], None],
        now: Callable[[], str] = utc_now,
    ):
        self.jobs, self.cache, self.fetcher, self.runner = jobs, cache, fetcher, runner
        self.device, self.deliver, self.set_state, self.progress = device, deliver, set_state, progress
        self.now = now

    def run(self, job: Job, cancel: threading.Event) -> RunOutcome:
        """Fetch and measure what is left of ``job``; never raises (a failure is the outcome)."""
        try:
            return self._run(job, cancel)
        except Exception as exc:
            log.exception("job %s failed", job.job_id)
            return self._outcome(job, "failed", f"internal error: {exc!r}")

    def _run(self, job: Job, cancel: threading.Event) -> RunOutcome:
        self.redeliver(job.job_id)
        entry = self.jobs.get(job.job_id)
        assert entry is not None
        done = set(entry.measured)
        todo = [(i, ref) for i, ref in enumerate(job.artifacts) if i not in done]
        resumed = entry.resumes > 0
        before = (
            f"resumed after a restart ({len(done)} of {len(job.artifacts)} measured before); "
            if resumed
            else ""
        )
        if resumed and job.expires_at and job.expires_at < self.now():
            names = ", ".join(ref.name for _, ref in todo) or "none"
            return self._outcome(job, "failed", f"{before}expired at {job.expires_at}; not measured: {names}")
        records: list[ResultRecord] = []
        with self.cache.pinned(ref for _, ref in todo):
            try:
                ready = []
                for i, ref in todo:
                    ready.append((i, ref, self._fetch(job, ref, cancel)))
                self.set_state(job, "running", f"{len(ready)} artifact(s)")
                for i, ref, path in ready:
                    if cancel.is_set():
                        break
                    produced = list(self.runner(path, job, ref, self.device(), cancel))
                    records.extend(produced)
                    self._store(job, i, produced, measured=not cancel.is_set())
                state, detail = summarize(records, len(entry.result_ids))
            except DeliveryError as exc:
                state, detail = "failed", str(exc)
            except Exception as exc:
                log.exception("job %s failed", job.job_id)
                state, detail = "failed", f"internal error: {exc!r}"
        return self._outcome(job, state, before + detail)

    def _outcome(self, job: Job, state: str, detail: str) -> RunOutcome:
        entry = self.jobs.get(job.job_id)
        return RunOutcome(state, detail, entry.result_ids if entry is not None else ())

    def _fetch(self, job: Job, ref: ArtifactRef, cancel: threading.Event) -> Path:
        self.set_state(job, "fetching", ref.name)
        path = self.fetcher.cached(ref)
        if path is not None:
            self.set_state(job, "verifying", f"{ref.name} (cached)")
            self.cache.verify(path, ref)
            return path
        return self.fetcher.obtain(
            ref,
            cancel,
            progress=lambda p: self.progress(job.job_id, ref.name, p),
            verifying=lambda: self.set_state(job, "verifying", ref.name),
        )

    def _store(self, job: Job, index: int, produced: list[ResultRecord], *, measured: bool) -> None:
        entry = self.jobs.get(job.job_id)
        assert entry is not None
        prior = entry.result_ids
        self.jobs.checkpoint(
            job.job_id,
            measured=entry.measured + ((index,) if measured else ()),
            result_ids=prior + tuple(r.result_id for r in produced),
            unsent=tuple(_unsent_json(r) for r in produced),
        )
        stored = tuple(r.result_id for r in produced if self.deliver(r))
        self.jobs.checkpoint(job.job_id, result_ids=prior + stored, unsent=())

    def redeliver(self, job_id: str) -> int:
        """Store again the records a killed agent had measured but maybe not stored; how many."""
        entry = self.jobs.get(job_id)
        if entry is None or not entry.unsent:
            return 0
        unsent_ids, stored = set(), set()
        for text in entry.unsent:
            try:
                record = ResultRecord.from_json(text)
            except (SchemaError, ValueError) as exc:
                log.error("job %s: an unsent record is unreadable (%s)", job_id, exc)
                continue
            unsent_ids.add(record.result_id)
            if self.deliver(record):
                stored.add(record.result_id)
        ids = tuple(i for i in entry.result_ids if i not in unsent_ids or i in stored)
        self.jobs.checkpoint(job_id, result_ids=ids, unsent=())
        log.info("job %s: %d record(s) from before the restart stored again", job_id, len(stored))
        return len(stored)


def _unsent_json(record: ResultRecord) -> str:
    text = record.to_json()
    if len(text) > UNSENT_MAX_BYTES and record.latency is not None and record.latency.samples_ms:
        text = replace(record, latency=replace(record.latency, samples_ms=None)).to_json()
    return text


def summarize(records: list[ResultRecord], earlier: int = 0) -> tuple[str, str]:
    """The job's final state and detail from this run's records (``earlier``: results stored before
    a restart, which count as measured)."""
    ok = sum(r.status == "ok" for r in records)
    failed = [r for r in records if r.status == "failed"]
    if records and not ok and failed and not earlier:
        return "failed", failed[0].error or "every measurement failed"
    detail = f"{ok} ok"
    if failed:
        detail += f", {len(failed)} failed ({failed[0].error})"
    if earlier:
        detail += f", {earlier} from before the restart"
    return "done", detail
