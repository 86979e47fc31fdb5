"""What one ingest process has done so far: counters shared by its input, buffer, writer and health row.

One writer per field: paho's network thread counts what arrives and the connection state, the writer
thread everything after a commit. Read by tests, the health row and `collector status`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from collector.messages.parse import Parsed

__all__ = ["IngestStats"]


@dataclass
class IngestStats:
    received: int = 0
    committed: int = 0
    results_inserted: int = 0
    results_duplicate: int = 0
    statuses: int = 0
    events: int = 0
    chunk_requests: int = 0
    dropped: int = 0  # counted, not stored: empty status payloads (a retained status being cleared)
    retained_cleared: int = 0  # retained garbage on a status topic removed from the broker
    batches: int = 0
    connected: bool = False
    subscribed: bool = False  # every subscription acknowledged (SUBACK) on the current connection
    receipts_sent: int = 0
    lag_s: float = 0.0
    rate_per_s: float = 0.0
    lock_wait_s: float = 0.0  # time spent waiting for the database write lock (other workers, readers)
    write_s: float = 0.0  # time from BEGIN to COMMIT done

    def __post_init__(self) -> None:
        self.dead = Counter()

    @property
    def dead_letters(self) -> int:
        return sum(self.dead.values())

    def count_committed(self, parsed: Sequence[Parsed], inserted: int, duplicate: int) -> None:
        """A batch is committed: count it, its results (new and absorbed copies) and each kind."""
        self.committed += len(parsed)
        self.batches += 1
        self.results_inserted += inserted
        self.results_duplicate += duplicate
        for p in parsed:
            if p.kind == "status":
                self.statuses += 1
            elif p.kind == "event":
                self.events += 1
            elif p.kind == "chunk_request":
                self.chunk_requests += 1
            elif p.kind == "drop":
                self.dropped += 1
            elif p.kind == "dead":
                self.dead[p.reason.partition(":")[0]] += 1
