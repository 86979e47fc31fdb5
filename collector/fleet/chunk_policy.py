"""Who may fetch which chunks, how often, and how much: the limits of
:class:`collector.fleet.chunks.ChunkServer`.

* :class:`ChunkLimits`: the numbers (per-device request rate, outstanding and in-flight bytes, the global
  in-flight bound that caps the collector's memory).
* :class:`TokenBucket`: the per-device request rate.
* :class:`RefusalLog`: counts refusals and logs them once per window and device, never per request.
* :class:`JobIndex`: a device may fetch an artifact only if a job the collector recorded (``jobs`` table)
  lists it and addresses the device: ``device:<id>``, ``all``, or ``tag:<t>`` with ``t`` among the
  device's tags (``devices`` table).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from collector.store.sqlite import connect

__all__ = ["ChunkLimits", "JobIndex", "RefusalLog", "TokenBucket"]

log = logging.getLogger("edgebench.collector.chunks")

MiB = 1024 * 1024


@dataclass(frozen=True)
class ChunkLimits:
    """Per-device limits (defaults fit an agent: one request per artifact, a re-request of the missing
    chunks after 10 s of silence, at most 5 times; artifacts up to 512 MiB)."""

    request_burst: int = 30  # requests a device may send at once ...
    requests_per_s: float = 0.5  # ... and the sustained rate after that (30 a minute)
    max_outstanding_bytes: int = 1024 * MiB  # queued (as references) + in flight, per device
    max_inflight_bytes: int = 4 * MiB  # published and not yet acknowledged by the broker, per device
    max_inflight_chunks: int = 64  # the same in messages (1 KiB chunks would be 4096 at 4 MiB)
    max_inflight_total_bytes: int = 16 * MiB  # all devices: the bound on chunk bytes held in memory
    inflight_timeout_s: float = 60.0  # an unacknowledged publish stops counting after this long
    inbox_size: int = 1000  # requests accepted by the rate limit and waiting to be examined
    refusal_log_window_s: float = 60.0  # one log line per device and window


@dataclass
class TokenBucket:
    capacity: float
    rate_per_s: float
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.stamp = self.capacity, now
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate_per_s)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class _Refusals:
    window_start: float
    counts: dict[str, int] = field(default_factory=dict)
    total: int = 0


class RefusalLog:
    """Counts refusals per device and reason; one warning per device and window, never one per request."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self.clock = clock
        self.lines_logged = 0
        self._by_device: dict[str, _Refusals] = {}
        self._lock = threading.Lock()

    def refuse(self, device_id: str, reason: str, detail: str = "") -> None:
        now = self.clock()
        with self._lock:
            state = self._by_device.get(device_id)
            if state is not None and now - state.window_start < self.window_s:
                state.counts[reason] = state.counts.get(reason, 0) + 1
                state.total += 1
                return
            before = state
            self._by_device[device_id] = _Refusals(now, {reason: 1}, 1)
            self.lines_logged += 1
        suppressed = ""
        if before is not None and before.total > 1:
            parts = ", ".join(f"{k} {v}" for k, v in sorted(before.counts.items()))
            suppressed = f"; {before.total} refused in the previous window ({parts})"
        log.warning(
            "refusing chunk requests from %s: %s%s%s (further refusals counted, logged once per %g s)",
            device_id,
            reason,
            f" ({detail})" if detail else "",
            suppressed,
            self.window_s,
        )

    def counts(self, device_id: str) -> dict[str, int]:
        with self._lock:
            state = self._by_device.get(device_id)
            return dict(state.counts) if state else {}


class JobIndex:
    """Is ``sha256`` part of a job addressed to ``device_id``? Answered from the collector's SQLite."""

    def __init__(
        self, db_path: str | Path, *, cache_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ):
        self.db_path = Path(db_path)
        self.cache_s = cache_s
        self.clock = clock
        self._conn: sqlite3.Connection | None = None
        self._yes: dict[tuple[str, str], float] = {}  # positive answers only: a new job must count at once
        self._lock = threading.Lock()

    def addressed(self, device_id: str, sha256: str) -> bool:
        key = (device_id, sha256)
        now = self.clock()
        with self._lock:
            if now - self._yes.get(key, -1e18) < self.cache_s:
                return True
            try:
                found = self._query(device_id, sha256)
            except sqlite3.Error as exc:
                log.warning("job lookup for %s failed: %s", device_id, exc)
                return False
            if found:
                if len(self._yes) > 10_000:
                    self._yes.clear()
                self._yes[key] = now
            return found

    def _query(self, device_id: str, sha256: str) -> bool:
        if self._conn is None:
            if not self.db_path.exists():
                return False
            self._conn = connect(self.db_path, readonly=True)
        targets = {
            target
            for target, artifacts in self._conn.execute(
                "SELECT target, artifacts FROM jobs WHERE instr(artifacts, ?) > 0", (sha256,)
            )
            if _lists(artifacts, sha256)
        }
        if not targets:
            return False
        if "all" in targets or f"device:{device_id}" in targets:
            return True
        tags = {t[4:] for t in targets if t.startswith("tag:")}
        if not tags:
            return False
        row = self._conn.execute("SELECT tags FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        try:
            device_tags = set(json.loads(row[0])) if row and row[0] else set()
        except (ValueError, TypeError):
            device_tags = set()
        return bool(tags & device_tags)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _lists(artifacts_json: str | None, sha256: str) -> bool:
    try:
        refs = json.loads(artifacts_json or "[]")
    except ValueError:
        return False
    return any(isinstance(r, dict) and r.get("sha256") == sha256 for r in refs)
