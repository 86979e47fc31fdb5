"""The chunk server: answers a device's ChunkRequest with ArtifactChunk payloads (QoS 1), within limits.

Artifacts are found by sha256 in the ``artifacts`` table (``path`` column) or in an explicit map
(``fleet push`` serves what it just registered). A file is re-hashed whenever its size or mtime
changes, and never served if its content no longer matches the sha256 the device asked for.

Limits (issue 13: 100 requests of 17 KB had made the collector queue 62,400 chunks and grow by 228 MB):

* **rate**: a token bucket per device (:attr:`ChunkLimits.request_burst`, ``requests_per_s``), checked in
  :meth:`ChunkServer.handle` before anything is queued; the inbox of requests waiting to be examined is
  bounded too.
* **addressed**: with a database, a device gets only artifacts of a job addressed to it
  (:class:`collector.fleet.chunk_policy.JobIndex`); ``fleet push`` (explicit ``paths``, no database) serves
  its own job's artifacts, or whatever its ``addressed`` callable allows.
* **coalescing**: what is queued is one *transfer* per (device, artifact): a bitmap of pending chunk
  indices, so asking again for chunks already queued queues nothing (a different chunk size replaces the
  pending transfer).
* **outstanding bytes**: pending (as references) + in flight per device stay under
  ``max_outstanding_bytes``; a request that would exceed it is refused whole.
* **memory**: chunks are read from the file only when sent, and at most ``max_inflight_bytes`` per
  device (``max_inflight_total_bytes`` for all) are handed to paho before the broker's PUBACK, so memory
  holds references plus that bound, whatever devices ask for.
* **fairness**: one chunk per device per round (round robin), so a device that floods gets its share of
  the send loop and no more; one that went over the request rate keeps a single chunk in flight for a
  refusal window. With ``n`` devices fetching, another device's push gets at least 1/n of the send loop
  (bench/chunk_flood.py measures the end-to-end slowdown with a real mosquitto).

Refusals are counted per device and reason and logged once per window (:class:`RefusalLog`).
One thread reads files and publishes, so a large model never stalls ingest.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector.fleet.chunk_files import ArtifactFiles
from collector.fleet.chunk_policy import ChunkLimits, JobIndex, RefusalLog, TokenBucket
from wire import topics
from wire.errors import EdgebenchError
from wire.schema import ArtifactChunk, ChunkRequest

__all__ = ["ChunkLimits", "ChunkServer", "ChunkServerError", "DeviceChunkStats"]

log = logging.getLogger("edgebench.collector.chunks")

MAX_CHUNK = 4 * 1024 * 1024
MIN_CHUNK = 1024


class ChunkServerError(EdgebenchError, RuntimeError):
    """The chunk server is used wrongly (e.g. no MQTT client attached)."""


@dataclass
class _Transfer:
    """Pending chunks of one artifact for one device: references (a bitmap), never the bytes."""

    request: ChunkRequest
    path: Path
    size: int
    chunk_size: int
    total: int
    pending: bytearray
    count: int = 0
    pending_bytes: int = 0
    cursor: int = 0

    def length(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def add(self, index: int) -> bool:
        byte, bit = divmod(index, 8)
        if self.pending[byte] >> bit & 1:
            return False
        self.pending[byte] |= 1 << bit
        self.count += 1
        self.pending_bytes += self.length(index)
        self.cursor = min(self.cursor, index)
        return True

    def pop(self) -> int:
        i = self.cursor
        while not self.pending[i >> 3] >> (i & 7) & 1:
            i += 1
        self.pending[i >> 3] &= ~(1 << (i & 7)) & 0xFF
        self.count -= 1
        self.pending_bytes -= self.length(i)
        self.cursor = i + 1
        return i


@dataclass
class DeviceChunkStats:
    requests: int = 0  # requests received (before any limit)
    refused: int = 0  # requests refused (rate, cap, not addressed, unknown, bad chunk size, busy)
    queued: int = 0  # chunk references queued
    coalesced: int = 0  # chunks asked for again while still queued: not queued twice
    sent: int = 0  # chunks published
    refused_by: dict[str, int] = field(default_factory=dict)


@dataclass
class _Device:
    bucket: TokenBucket
    transfers: OrderedDict[str, _Transfer] = field(default_factory=OrderedDict)
    inflight: deque = field(default_factory=deque)  # (info, nbytes, published_at)
    inflight_bytes: int = 0
    throttled_until: float = 0.0  # went over the request rate: one chunk in flight until then
    stats: DeviceChunkStats = field(default_factory=DeviceChunkStats)

    @property
    def pending_bytes(self) -> int:
        return sum(t.pending_bytes for t in self.transfers.values())


class ChunkServer:
    def __init__(
        self,
        db_path: str | Path | None = None,
        *,
        paths: Mapping[str, Path] | None = None,
        on_served: Callable[[ChunkRequest, int], None] | None = None,
        limits: ChunkLimits | None = None,
        addressed: Callable[[str, str], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        start: bool = True,
    ):
        """``addressed(device_id, sha256)``: may this device fetch this artifact? Default: with ``db_path``,
        the jobs in the database (:class:`JobIndex`); without, every artifact in ``paths``.
        ``start=False``: no sending thread (tests drive :meth:`admit` and :meth:`pump` themselves)."""
        self.db_path = db_path
        self.files = ArtifactFiles(db_path, paths)
        self.on_served = on_served
        self.limits = limits or ChunkLimits()
        self.clock = clock
        self._index = JobIndex(db_path, clock=clock) if db_path is not None and addressed is None else None
        self.addressed = addressed or (self._index.addressed if self._index else None)
        self.refusals = RefusalLog(self.limits.refusal_log_window_s, clock)
        self.chunks_served = 0
        self.chunks_queued = 0
        self.requests = 0
        self.refused = 0
        self._devices: OrderedDict[str, _Device] = OrderedDict()
        self._inflight_total = 0
        self._inbox: queue.Queue[ChunkRequest | None] = queue.Queue(maxsize=self.limits.inbox_size)
        self._lock = threading.RLock()
        self._publish: Callable[..., Any] | None = None
        self._is_connected: Callable[[], bool] | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._loop, name="chunk-server", daemon=True)
            self._thread.start()

    def attach(self, client: object) -> None:
        """Publish with this paho client (any thread may publish)."""
        self._publish = client.publish  # type: ignore[attr-defined]
        self._is_connected = getattr(client, "is_connected", None)

    @property
    def paths(self) -> dict[str, Path]:
        return self.files.paths

    def add(self, sha256: str, path: Path) -> None:
        with self._lock:
            self.files.paths[sha256] = Path(path)

    # -- intake (any thread, e.g. the MQTT network thread)
    def handle(self, request: ChunkRequest) -> bool:
        """Rate-limit, then queue the request for the sending thread. False: refused."""
        with self._lock:
            device = self._device(request.device_id)
            device.stats.requests += 1
            self.requests += 1
            now = self.clock()
            if not device.bucket.take(now):
                device.throttled_until = now + self.limits.refusal_log_window_s
                self._refuse(device, request, "rate", f"more than {self.limits.request_burst} at once")
                return False
        try:
            self._inbox.put_nowait(request)
        except queue.Full:
            with self._lock:
                self._refuse(device, request, "busy", f"{self.limits.inbox_size} requests waiting")
            return False
        return True

    def admit(self, request: ChunkRequest) -> int:
        """Check the request and queue references to the chunks it asks for that are not queued yet;
        return how many were queued (0 if refused or all already queued)."""
        with self._lock:
            device = self._device(request.device_id)
            if not MIN_CHUNK <= request.chunk_size <= MAX_CHUNK:
                detail = f"chunk size {request.chunk_size}, allowed {MIN_CHUNK}..{MAX_CHUNK}"
                return self._refuse(device, request, "chunk-size", detail)
            if self.addressed is not None and not self.addressed(request.device_id, request.sha256):
                detail = f"artifact {request.sha256[:12]} is in no job addressed to it"
                return self._refuse(device, request, "not-addressed", detail)
            path = self.files.resolve(request.sha256)
            if path is None:
                return self._refuse(device, request, "unknown", f"artifact {request.sha256[:12]}")
            size = path.stat().st_size
            total = max(1, math.ceil(size / request.chunk_size))
            transfer = device.transfers.get(request.sha256)
            if transfer is not None and (transfer.chunk_size != request.chunk_size or transfer.path != path):
                del device.transfers[request.sha256]  # superseded: a device asks with one chunk size
                transfer = None
            if transfer is None:
                transfer = _Transfer(
                    request, path, size, request.chunk_size, total, bytearray(total // 8 + 1)
                )
            wanted = (
                sorted({i for i in request.indices if 0 <= i < total}) if request.indices else range(total)
            )
            new = [i for i in wanted if not transfer.pending[i >> 3] >> (i & 7) & 1]
            new_bytes = sum(transfer.length(i) for i in new)
            outstanding = device.pending_bytes + device.inflight_bytes
            if new and outstanding + new_bytes > self.limits.max_outstanding_bytes:
                detail = f"{outstanding + new_bytes} bytes outstanding > {self.limits.max_outstanding_bytes}"
                return self._refuse(device, request, "outstanding-cap", detail)
            for i in new:
                transfer.add(i)
            transfer.request = request
            if transfer.count:
                device.transfers[request.sha256] = transfer
            device.stats.queued += len(new)
            device.stats.coalesced += len(wanted) - len(new)
            self.chunks_queued += len(new)
            return len(new)

    def _refuse(self, device: _Device, request: ChunkRequest, reason: str, detail: str) -> int:
        device.stats.refused += 1
        device.stats.refused_by[reason] = device.stats.refused_by.get(reason, 0) + 1
        self.refused += 1
        self.refusals.refuse(request.device_id, reason, detail)
        return 0

    def _device(self, device_id: str) -> _Device:
        device = self._devices.get(device_id)
        if device is None:
            device = _Device(TokenBucket(self.limits.request_burst, self.limits.requests_per_s))
            self._devices[device_id] = device
        return device

    # -- what is queued
    def stats(self, device_id: str) -> DeviceChunkStats:
        with self._lock:
            device = self._devices.get(device_id)
            if device is None:
                return DeviceChunkStats()
            s = device.stats
            return DeviceChunkStats(s.requests, s.refused, s.queued, s.coalesced, s.sent, dict(s.refused_by))

    def pending(self, device_id: str) -> tuple[int, int]:
        """(chunks, bytes) queued for the device as references, not yet published."""
        with self._lock:
            device = self._devices.get(device_id)
            if device is None:
                return 0, 0
            return sum(t.count for t in device.transfers.values()), device.pending_bytes

    def inflight_bytes(self, device_id: str | None = None) -> int:
        """Chunk bytes handed to paho and not acknowledged yet (one device, or all)."""
        with self._lock:
            if device_id is None:
                return self._inflight_total
            device = self._devices.get(device_id)
            return device.inflight_bytes if device else 0

    # -- files
    def resolve(self, sha256: str) -> Path | None:
        """The file holding exactly this content, or None."""
        with self._lock:
            return self.files.resolve(sha256)

    # -- sending (one thread)
    def pump(self) -> int:
        """Reap acknowledgements, then send at most one chunk per device (round robin) within the
        in-flight bounds. Returns how many chunks were published."""
        if self._publish is None:
            raise ChunkServerError("ChunkServer.attach(client) first")
        if self._is_connected is not None and not self._is_connected():
            return 0
        lim = self.limits
        sent = 0
        now = self.clock()
        with self._lock:
            self._reap()
            for device_id in list(self._devices):
                if self._inflight_total >= lim.max_inflight_total_bytes:
                    break
                device = self._devices[device_id]
                if not device.transfers:
                    continue
                max_chunks = 1 if device.throttled_until > now else lim.max_inflight_chunks
                if device.inflight_bytes >= lim.max_inflight_bytes or len(device.inflight) >= max_chunks:
                    continue
                sha, transfer = next(iter(device.transfers.items()))
                index = transfer.pop()
                if not transfer.count:
                    del device.transfers[sha]
                try:
                    data = self.files.read(transfer.path, index * transfer.chunk_size, transfer.chunk_size)
                    chunk = ArtifactChunk(transfer.request.sha256, index, transfer.total, transfer.size, data)
                    info = self._publish(topics.device_chunks(device_id), chunk.to_bytes(), qos=1)
                except (OSError, ValueError) as exc:
                    log.error("serving %s to %s failed: %s", sha[:12], device_id, exc)
                    device.transfers.pop(sha, None)
                    continue
                device.inflight.append((info, len(data), self.clock()))
                device.inflight_bytes += len(data)
                self._inflight_total += len(data)
                device.stats.sent += 1
                self.chunks_served += 1
                sent += 1
                if self.on_served:
                    self.on_served(transfer.request, 1)
            if self._devices:  # rotate, so the global bound does not always favour the same devices
                self._devices.move_to_end(next(iter(self._devices)))
        return sent

    def _reap(self) -> None:
        now = self.clock()
        timeout = self.limits.inflight_timeout_s
        for device in self._devices.values():
            while device.inflight:
                info, nbytes, at = device.inflight[0]
                if not (_published(info) or now - at > timeout):
                    break
                device.inflight.popleft()
                device.inflight_bytes -= nbytes
                self._inflight_total -= nbytes

    def _busy(self) -> bool:
        with self._lock:
            return any(d.transfers or d.inflight for d in self._devices.values())

    def _loop(self) -> None:
        sent = 0
        try:
            while not self._stopping.is_set():
                # Sent something: go on at once. Waiting for PUBACKs: look again in 2 ms. Idle: block.
                timeout = 0.0 if sent else (0.002 if self._busy() else 0.5)
                try:
                    request = self._inbox.get(timeout=timeout) if timeout else self._inbox.get_nowait()
                except queue.Empty:
                    request = None
                while request is not None:
                    try:
                        self.admit(request)
                    except Exception:
                        log.exception("chunk request of %s failed", request.device_id)
                    try:
                        request = self._inbox.get_nowait()
                    except queue.Empty:
                        request = None
                sent = 0
                if self._publish is not None and self._busy():
                    try:
                        sent = self.pump()
                    except Exception:
                        log.exception("sending chunks failed")
        finally:
            self._close_files()

    def _close_files(self) -> None:
        with self._lock:
            self.files.close()
        if self._index is not None:
            self._index.close()

    def close(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        else:
            self._close_files()


def _published(info: Any) -> bool:
    try:
        return bool(info.is_published())
    except (ValueError, RuntimeError):  # not queued, or not connected: counted until the timeout
        return False
