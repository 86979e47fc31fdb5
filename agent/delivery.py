"""Model delivery over MQTT: chunk assembly with resume, sha256 check, content-addressed LRU cache.

The device asks for every chunk of an artifact (:class:`~agent.schema.ChunkRequest` with no
indices); chunks arrive as :class:`~agent.schema.ArtifactChunk` payloads and are written at their
offset into ``cache/partial/<sha>.part``. When nothing arrives for ``chunk_timeout_s`` the device asks
again for the missing indices only (resume); after ``retries`` such rounds without progress the fetch
fails. The assembled file is verified (size, sha256) and moved into the cache atomically (fsync, rename,
fsync of the directory) as ``cache/<sha256><.onnx|.tflite>``. The cache is bounded by size and evicts
the least recently used artifacts (use = mtime, refreshed on every hit).
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.schema import ArtifactChunk, ArtifactRef, ChunkRequest, SchemaError

__all__ = ["ArtifactCache", "ArtifactFetcher", "DeliveryError", "sha256_file"]


class DeliveryError(Exception):
    """An artifact could not be fetched, failed verification, or does not fit the cache."""


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactCache:
    """Content-addressed files ``<root>/<sha256>.<format>``, LRU-evicted above ``max_bytes``."""

    def __init__(self, root: Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.partial_dir = self.root / "partial"
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def path_for(self, sha256: str, fmt: str) -> Path:
        return self.root / f"{sha256}.{fmt}"

    def get(self, sha256: str, fmt: str) -> Path | None:
        """The cached file (its use time refreshed), or None."""
        path = self.path_for(sha256, fmt)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        return path

    def entries(self) -> list[Path]:
        return sorted(
            (p for p in self.root.iterdir() if p.is_file() and len(p.stem) == 64),
            key=lambda p: p.stat().st_mtime,
        )

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.entries())

    def adopt(self, assembled: Path, ref: ArtifactRef) -> Path:
        """Verify ``assembled`` against ``ref`` (size, sha256) and move it into the cache atomically."""
        size = assembled.stat().st_size
        if size != ref.size_bytes:
            assembled.unlink(missing_ok=True)
            raise DeliveryError(f"{ref.name}: got {size} bytes, the job says {ref.size_bytes}")
        actual = sha256_file(assembled)
        if actual != ref.sha256:
            assembled.unlink(missing_ok=True)
            raise DeliveryError(
                f"{ref.name}: sha256 mismatch (expected {ref.sha256[:12]}..., got {actual[:12]}...)"
            )
        with open(assembled, "rb+") as f:
            os.fsync(f.fileno())
        final = self.path_for(ref.sha256, ref.format)
        os.replace(assembled, final)
        _fsync_dir(self.root)
        self.evict(keep={final})
        return final

    def verify(self, path: Path, ref: ArtifactRef) -> None:
        """Re-check a cached file; a corrupt one is removed."""
        if path.stat().st_size != ref.size_bytes or sha256_file(path) != ref.sha256:
            path.unlink(missing_ok=True)
            raise DeliveryError(f"{ref.name}: cached copy is corrupt (removed); fetch it again")

    def evict(self, keep: set[Path] = frozenset()) -> list[Path]:  # type: ignore[assignment]
        """Remove least recently used files until the cache fits ``max_bytes``."""
        removed = []
        with self._lock:
            entries = self.entries()
            total = sum(p.stat().st_size for p in entries)
            for path in entries:
                if total <= self.max_bytes:
                    break
                if path in keep:
                    continue
                total -= path.stat().st_size
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed


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
        _allocate(path, ref)
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


def _allocate(path: Path, ref: ArtifactRef) -> None:
    """Create the partial file at its full size, with the blocks reserved where the file system can
    (posix_fallocate), so that a disk without room fails here with a clear reason, not chunk by chunk."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        raise DeliveryError(f"{ref.name}: cannot create {path}: {exc.strerror}") from None
    try:
        _reserve(fd, ref.size_bytes)
    except OSError as exc:
        path.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise DeliveryError(
                f"{ref.name}: no space left on the device for {ref.size_bytes} bytes in {path.parent}"
            ) from None
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
