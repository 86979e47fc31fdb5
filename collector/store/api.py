"""The collector's store, as an interface: what ingest and fleet write and read.

:class:`ResultStore` is implemented by :class:`collector.store.sqlite.SqliteStore` (the SQLite file,
WAL, migrations); a second backend (PostgreSQL) implements the same methods. Every write is
idempotent where the wire can repeat itself: a result is keyed by ``result_id`` and a second copy is
absorbed, not an error; a job event is keyed by ``(job_id, device_id, state, at)``.

Ingest writes one batch per transaction through :class:`StoreTransaction` (nothing is visible, and
nothing acknowledged, before its commit): ``with store.transaction() as tx: ...``, reaching the store
through a :class:`BatchTarget`: the backend's retry policy (SQLite: the database file watch; PostgreSQL:
reconnect and retry) and its word on what an error means (:data:`ErrorKind`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from wire.schema import ArtifactInfo, ArtifactRef, DeviceStatus, Job, JobEvent, ResultRecord

__all__ = [
    "INTERNAL",
    "REFUSED",
    "TRANSIENT",
    "BatchTarget",
    "Begin",
    "DeadLetter",
    "ErrorKind",
    "HealthRow",
    "ResultStore",
    "StoreTransaction",
]

T = TypeVar("T")

# What a failed write means, as the store's backend says (BatchTarget.classify):
TRANSIENT = "transient"  # the database cannot be written now (locked, read-only, full, I/O, connection
#                          lost): retry the batch; nothing is acknowledged meanwhile
REFUSED = "refused"  # the store refused this data (a constraint, a value it cannot hold): the culprit
#                      message becomes a dead letter "store-error"
INTERNAL = "internal"  # anything else (a bug, a poison message): a dead letter "internal-error"
ErrorKind = Literal["transient", "refused", "internal"]


@dataclass(frozen=True)
class DeadLetter:
    """A message that could not be stored as what it claims to be: kept with a bounded excerpt."""

    topic: str
    reason: str  # "<class>: <detail>", the class one of collector.messages.parse.DEAD_CLASSES
    payload: bytes


@dataclass(frozen=True)
class HealthRow:
    """One collector writer's snapshot (``collector_health``, one row per client id)."""

    client_id: str
    pid: int
    started_at: str
    updated_at: str
    connected: bool
    received: int
    committed: int
    results_inserted: int
    results_duplicate: int
    dead_letters: int
    queue_depth: int
    rate_per_s: float
    lag_s: float
    chunks_served: int


class StoreTransaction(Protocol):
    """The writes of one ingest batch, all inside one transaction."""

    def insert_results(self, records: Sequence[ResultRecord], texts: Sequence[str | None], at: str) -> int:
        """Results with the JSON as received (None: re-encoded); returns how many were new."""
        ...

    def upsert_statuses(self, statuses: Iterable[DeviceStatus]) -> None:
        """Device rows; a status older than the stored one never flips the online state back."""
        ...

    def insert_job_events(self, events: Sequence[JobEvent], at: str) -> int:
        """Job events (a repeated one is ignored); returns how many were new."""
        ...

    def insert_dead_letters(self, letters: Sequence[DeadLetter], at: str) -> None: ...

    def write_health(self, row: HealthRow) -> None:
        """Insert or replace the writer's snapshot row (keyed by client id)."""
        ...


class ResultStore(Protocol):
    """What ingest (batches, health) and fleet (jobs, artifacts, events) write and read."""

    def transaction(self) -> AbstractContextManager[StoreTransaction]:
        """Begin (waiting for the write lock); commit on a normal exit, roll back on an exception."""
        ...

    def insert_results(self, records: Iterable[ResultRecord], received_at: str | None = None) -> int: ...

    def upsert_device(self, status: DeviceStatus) -> None: ...

    def insert_job_events(self, events: Iterable[JobEvent], received_at: str | None = None) -> int: ...

    def record_job(self, job: Job, state: str = "published") -> None:
        """Store a published job, or update the state of a stored one."""
        ...

    def set_job_state(self, job_id: str, state: str) -> None: ...

    def register_artifact(
        self,
        info: ArtifactInfo | ArtifactRef,
        *,
        path: str | Path | None = None,
        source: str = "",
        fidelity: dict[str, Any] | None = None,
        registered_at: str | None = None,
    ) -> None:
        """Insert or refresh an artifact by sha256 (its path is where chunks are served from)."""
        ...

    def artifact_path(self, sha256: str) -> Path | None: ...

    def count(self, table: str) -> int: ...

    def close(self) -> None: ...


Begin = Callable[[], AbstractContextManager[StoreTransaction]]  # starts one transaction


class BatchTarget(Protocol):
    """Where ingest commits its batches (collector.ingest.writer.BatchWriter): one backend's store
    behind that backend's retry policy."""

    def write(self, fn: Callable[[Begin], T], stop: threading.Event) -> T:
        """Run ``fn(begin)`` (its transactions committed inside) until it returns, retrying while the
        database cannot be written (``fn`` raised a TRANSIENT error); nothing may be acknowledged
        before this returns. Once ``stop`` is set it gives up after a few quick attempts (an
        EdgebenchError): nothing was acknowledged, the broker redelivers."""
        ...

    def classify(self, exc: BaseException) -> ErrorKind:
        """TRANSIENT, REFUSED or INTERNAL: what ``exc`` (raised inside a transaction) means."""
        ...
