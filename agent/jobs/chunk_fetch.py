"""Model delivery over MQTT: chunk assembly with resume, sha256 check, content-addressed LRU cache.

The device asks for every chunk of an artifact (:class:`~wire.schema.ChunkRequest` with no
indices); chunks arrive as :class:`~wire.schema.ArtifactChunk` payloads and are written at their
offset into ``cache/partial/<sha>.part``. When nothing arrives for ``chunk_timeout_s`` the device asks
again for the missing indices only (resume); after ``retries`` such rounds without progress the fetch
fails. The assembled file is verified (size, sha256) and moved into the cache atomically (fsync, rename,
fsync of the directory) as ``cache/<sha256><.onnx|.tflite>`` (:mod:`agent.jobs.cache`: bounded by size,
least recently used evicted first).

Disk room: the partial file is allocated in full before the first chunk is asked for; when the disk
lacks room the cache is evicted first (never the running job's pinned artifacts) and the allocation
tried again. A fetch that fails for any reason (timeout, sha256 mismatch, a chunk write error, cancel,
no space) removes its partial file: :meth:`ArtifactFetcher.obtain` is fetch + verify + adopt with that
guarantee.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.jobs.cache import ArtifactCache, DeliveryError, sha256_file
from wire.schema import ArtifactChunk, ArtifactRef, ChunkRequest, SchemaError

__all__ = ["ArtifactCache", "ArtifactFetcher", "DeliveryError", "sha256_file"]


@dataclass
class _Transfer:
    ref: ArtifactRef
    chunk_size: int
    total: int
    path: Path
    received: set[int] = field(default_factory=set)
    bad: int = 0
    last_at: float = 0.0
    error: str = ""  # a chunk could not be written (e.g. the disk filled up): the fetch fails with it
    changed: threading.Condition = field(default_factory=threading.Condition)


class ArtifactFetcher:
    """Fetches artifacts chunk by chunk; :meth:`on_chunk` is fed from the MQTT network thread."""

    def __init__(
        self,
        cache: ArtifactCache,
        device_id: str,
        send: Callable[[ChunkRequest], None],
        *,
        chunk_size: int = 256 * 1024,
        chunk_timeout_s: float = 10.0,
        retries: int = 5,
        max_artifact_bytes: int = 512 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cache, self.device_id, self.send = cache, device_id, send
        self.chunk_size, self.chunk_timeout_s, self.retries = chunk_size, chunk_timeout_s, retries
        self.max_artifact_bytes = max_artifact_bytes
        self.clock = clock
        self.requests_sent = 0
        self._active: dict[str, _Transfer] = {}
        self._lock = threading.Lock()

    def cached(self, ref: ArtifactRef) -> Path | None:
        return self.cache.get(ref.sha256, ref.format)

    def obtain(
        self,
        ref: ArtifactRef,
        cancel: threading.Event | None = None,
        progress: Callable[[float], None] | None = None,
        verifying: Callable[[], None] | None = None,
    ) -> Path:
        """Fetch, verify and adopt ``ref``: its path in the cache. On any failure no partial file stays."""
        part = self.fetch(ref, cancel, progress)
        try:
            if verifying is not None:
                verifying()
            return self.cache.adopt(part, ref)
        finally:
            part.unlink(missing_ok=True)  # adopted: already moved; failed: removed

    def fetch(
        self,
        ref: ArtifactRef,
        cancel: threading.Event | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> Path:
        """Download ``ref`` into ``cache/partial`` and return the assembled (not yet verified) file."""
        if ref.size_bytes > self.max_artifact_bytes:
            raise DeliveryError(
                f"{ref.name}: {ref.size_bytes} bytes exceeds the limit "
                f"(max_artifact_mb = {self.max_artifact_bytes / 2**20:g})"
            )
        if ref.size_bytes > self.cache.max_bytes:
            raise DeliveryError(f"{ref.name}: {ref.size_bytes} bytes does not fit the cache")
        total = -(-ref.size_bytes // self.chunk_size)
        path = self.cache.partial_dir / f"{ref.sha256}.part"
        self.cache.make_room(ref.size_bytes, f"room for {ref.name}")
        try:
            _allocate(path, ref)
        except _NoSpace:  # the disk filled up meanwhile, or the margin was not enough: evict, retry
            if not self.cache.evict(ref.size_bytes, reason=f"room for {ref.name}"):
                raise _no_space(ref, path) from None
            try:
                _allocate(path, ref)
            except _NoSpace:
                raise _no_space(ref, path) from None
        transfer = _Transfer(ref, self.chunk_size, total, path)
        with self._lock:
            self._active[ref.sha256] = transfer
        try:
            self._request(ref, ())
            asked_at, count_at_ask, idle_rounds, reported = self.clock(), 0, 0, 0.0
            while True:
                with transfer.changed:
                    transfer.changed.wait_for(
                        lambda: (
                            len(transfer.received) == total
                            or bool(transfer.error)
                            or (cancel is not None and cancel.is_set())
                        ),
                        timeout=min(0.5, self.chunk_timeout_s),
                    )
                    count = len(transfer.received)
                if count == total:
                    return path
                if transfer.error:
                    raise DeliveryError(f"{ref.name}: {transfer.error}")
                if cancel is not None and cancel.is_set():
                    raise DeliveryError(f"{ref.name}: fetch cancelled")
                now = self.clock()
                if progress is not None and now - reported >= 1.0:
                    progress(count / total)
                    reported = now
                if now - max(transfer.last_at, asked_at) < self.chunk_timeout_s:
                    continue
                # nothing arrived for a whole timeout: ask again for the missing chunks only
                idle_rounds = idle_rounds + 1 if count == count_at_ask else 0
                if idle_rounds > self.retries:
                    raise DeliveryError(
                        f"{ref.name}: {total - count} of {total} chunks missing after "
                        f"{self.retries} re-requests ({self.chunk_timeout_s:g} s each)"
                    )
                with transfer.changed:
                    missing = tuple(i for i in range(total) if i not in transfer.received)
                self._request(ref, missing)
                asked_at, count_at_ask = self.clock(), count
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        finally:
            with self._lock:
                self._active.pop(ref.sha256, None)

    def _request(self, ref: ArtifactRef, indices: tuple[int, ...]) -> None:
        self.requests_sent += 1
        self.send(ChunkRequest(self.device_id, ref.sha256, indices=indices, chunk_size=self.chunk_size))

    def on_chunk(self, payload: bytes) -> bool:
        """Write one chunk at its offset. False (ignored) when unexpected or inconsistent."""
        try:
            chunk = ArtifactChunk.from_bytes(payload)
        except SchemaError:
            return False
        with self._lock:
            transfer = self._active.get(chunk.sha256)
        if transfer is None:
            return False
        size = transfer.ref.size_bytes
        expected = min(transfer.chunk_size, size - chunk.index * transfer.chunk_size)
        if chunk.total != transfer.total or chunk.size_bytes != size or len(chunk.data) != expected:
            transfer.bad += 1
            return False
        with transfer.changed:
            if chunk.index in transfer.received:
                return True
            try:
                fd = os.open(transfer.path, os.O_WRONLY)
            except FileNotFoundError:
                return False
            try:
                os.pwrite(fd, chunk.data, chunk.index * transfer.chunk_size)
            except OSError as exc:
                transfer.error = f"writing chunk {chunk.index} to {transfer.path.parent}: {exc.strerror}"
                transfer.changed.notify_all()
                return False
            finally:
                os.close(fd)
            transfer.received.add(chunk.index)
            transfer.last_at = self.clock()
            transfer.changed.notify_all()
        return True


class _NoSpace(Exception):
    """ENOSPC while allocating a partial file (nothing of it is left)."""


def _no_space(ref: ArtifactRef, path: Path) -> DeliveryError:
    return DeliveryError(
        f"{ref.name}: no space left on the device for {ref.size_bytes} bytes in {path.parent} "
        "(after evicting what the cache could give)"
    )


def _allocate(path: Path, ref: ArtifactRef) -> None:
    """Create the partial file at its full size, with the blocks reserved where the file system can
    (posix_fallocate), so that a disk without room fails here with a clear reason, not chunk by chunk.
    Raises :class:`_NoSpace` (nothing left behind) or DeliveryError."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise _NoSpace() from None
        raise DeliveryError(f"{ref.name}: cannot create {path}: {exc.strerror}") from None
    try:
        _reserve(fd, ref.size_bytes)
    except OSError as exc:
        path.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise _NoSpace() from None
        raise DeliveryError(f"{ref.name}: cannot allocate {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _reserve(fd: int, size: int) -> None:
    """Reserve ``size`` bytes; where the platform or file system cannot, a sparse file (ENOSPC raises)."""
    fallocate = getattr(os, "posix_fallocate", None)
    if size > 0 and fallocate is not None:
        try:
            fallocate(fd, 0, size)
            return
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise
    os.ftruncate(fd, size)
