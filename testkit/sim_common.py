"""The fleet simulator's settings, counters and event loop (testkit/sim_device.py drives devices on it)."""

from __future__ import annotations

import heapq
import itertools
import selectors
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BURST", "JobTally", "SimConfig", "SimLoop", "SimStats"]

BURST = "burst"  # the stats key of results published outside any job


@dataclass(frozen=True)
class SimConfig:
    host: str
    port: int
    trusted_key: str  # the collector's public key (PEM file)
    keepalive: int = 60
    heartbeat_s: float = 30.0
    confirm_timeout_s: float = 30.0  # no receipt by then: send again (the agent's outbox does the same)
    chunk_size: int = 256 * 1024
    chunk_timeout_s: float = 10.0
    chunk_retries: int = 5
    inflight: int = 20  # QoS 1 messages awaiting PUBACK per device
    median_ms: float = 8.0  # the fleet's median p50; each device and artifact varies around it


@dataclass
class JobTally:
    """One job (or the burst) as this process's devices saw it; wall-clock times for cross-process use."""

    received: int = 0
    done: int = 0
    failed: int = 0
    produced: int = 0
    confirmed: int = 0
    bytes_fetched: int = 0
    first_at: float = 0.0
    last_confirmed_at: float = 0.0


@dataclass
class SimStats:
    devices: int = 0
    connected: int = 0
    subscribed: int = 0
    online_at: float = 0.0  # when the last device got its SUBACK
    connects: int = 0
    disconnects: int = 0
    rejected_jobs: int = 0
    sha_mismatch: int = 0
    chunk_rerequests: int = 0
    resent: int = 0
    receipts: int = 0
    receipt_rejected: int = 0
    events_confirmed: int = 0
    jobs: dict[str, JobTally] = field(default_factory=dict)
    produced_ids: list[str] = field(default_factory=list)

    def tally(self, job_id: str) -> JobTally:
        return self.jobs.setdefault(job_id, JobTally())


class SimLoop:
    """One selector and a timer heap for many paho clients (paho's external event loop callbacks)."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.clients: list[Any] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def attach(self, client: Any) -> None:
        client.on_socket_open = lambda c, _u, sock: self.sel.register(sock, selectors.EVENT_READ, c)
        client.on_socket_close = lambda _c, _u, sock: self._forget(sock)
        client.on_socket_register_write = lambda c, _u, sock: self._watch(sock, c, write=True)
        client.on_socket_unregister_write = lambda c, _u, sock: self._watch(sock, c, write=False)
        self.clients.append(client)

    def _forget(self, sock: Any) -> None:
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass

    def _watch(self, sock: Any, client: Any, *, write: bool) -> None:
        mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0)
        try:
            self.sel.modify(sock, mask, client)
        except (KeyError, ValueError):
            pass

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay_s, next(self._seq), fn))

    def every(self, period_s: float, fn: Callable[[], None], first_s: float | None = None) -> None:
        def tick() -> None:
            fn()
            self.call_later(period_s, tick)

        self.call_later(period_s if first_s is None else first_s, tick)

    def run_once(self, max_wait_s: float = 0.2) -> None:
        wait = max_wait_s
        if self._timers:
            wait = max(0.0, min(wait, self._timers[0][0] - time.monotonic()))
        for key, mask in self.sel.select(wait):
            if not hasattr(key.data, "loop_read"):
                key.data()  # a plain callback (the control pipe)
                continue
            if mask & selectors.EVENT_READ:
                key.data.loop_read(max_packets=16)
            if mask & selectors.EVENT_WRITE:
                key.data.loop_write()
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, fn = heapq.heappop(self._timers)
            fn()
