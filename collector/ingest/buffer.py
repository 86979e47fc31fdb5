"""The bounded in-memory queue between paho's network thread and the ingest writer.

The network thread :meth:`Inbox.put` s every message (raw bytes, straight from the packet) and the
writer :meth:`Inbox.take` s up to a batch at a time. deque appends and pops are atomic, and the writer
sleeps on an event only while the queue is empty, so a busy stream costs no lock or notify per
message. A full queue is back-pressure: ``put`` blocks the network thread (it stops reading from the
broker) until the writer catches up. Nothing here is acknowledged: a message is only acknowledged
after its commit, so what the queue holds when the process dies is redelivered by the broker.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from collector.ingest.stats import IngestStats

__all__ = ["Incoming", "Inbox"]

# (topic, payload, packet id, QoS, received at (the ingest clock), connection generation)
Incoming = tuple[str, bytes, int, int, float, int]


class Inbox:
    """Bounded (``max_items``) queue of :data:`Incoming`; counts ``stats.received``."""

    def __init__(
        self, max_items: int, stats: IngestStats, stop: threading.Event, clock: Callable[[], float]
    ) -> None:
        self.max_items = max_items
        self._items: deque[Incoming] = deque()
        self._wake = threading.Event()
        self._stats = stats
        self._stop = stop  # once set, a full queue no longer blocks the network thread
        self._clock = clock

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def put(self, topic: str, payload: bytes, mid: int, qos: int, generation: int) -> None:
        """Append one message (the network thread); block while the queue is full."""
        self._stats.received += 1
        items = self._items
        items.append((topic, payload, mid, qos, self._clock(), generation))
        if not self._wake.is_set():
            self._wake.set()
        if len(items) >= self.max_items:  # back-pressure: stop reading until the writer catches up
            while len(items) >= self.max_items and not self._stop.is_set():
                time.sleep(0.002)

    def take(self, max_items: int, timeout_s: float = 0.1) -> list[Incoming]:
        """Up to ``max_items`` messages, oldest first; [] when none arrived within ``timeout_s``."""
        items = self._items
        if not items:
            self._wake.clear()
            if not items and not self._wake.wait(timeout_s):
                return []
        popleft = items.popleft
        n = min(len(items), max_items)
        return [popleft() for _ in range(n)]
