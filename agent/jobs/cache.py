"""The device's artifact cache: content-addressed files, LRU-evicted for its size bound and for disk room.

Files are ``<root>/<sha256>.<format>``; "use" is the mtime, refreshed on every hit. Two reasons to evict,
both least recently used first and never a *pinned* file (the running job's artifacts,
:meth:`ArtifactCache.pinned`):

* the cache bound (``max_bytes``, [jobs] cache_mb): :meth:`ArtifactCache.trim` after each adoption;
* room on the disk for what matters more than a cached model (the outbox, the job state, the next
  artifact): :meth:`ArtifactCache.evict` frees at least ``need_bytes``, :meth:`ArtifactCache.make_room`
  frees what the file system lacks for ``need_bytes`` more.

Every eviction is counted in ``<root>/evictions.json`` (:mod:`agent.jobs.evictions`). Partial downloads live
in ``<root>/partial/``; the fetcher removes its own on every failure and :meth:`clear_partials` removes
what a killed agent left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from agent.jobs.evictions import EVICTIONS_FILE, Eviction, EvictionLog
from wire.errors import EdgebenchError
from wire.schema import ArtifactRef, utc_now

log = logging.getLogger("edgebench.agent.cache")

__all__ = ["ArtifactCache", "DeliveryError", "cache_entries", "disk_free", "sha256_file"]

ROOM_MARGIN = 256 * 1024  # asked on top of a file's own size: file system metadata, WAL pages


class DeliveryError(EdgebenchError):
    """An artifact could not be fetched, failed verification, or does not fit the cache."""


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def disk_free(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system holding ``path``."""
    return shutil.disk_usage(path).free


def _disk_bytes(st: os.stat_result) -> int:
    """What a file occupies on the disk (blocks; a sparse file less than its size)."""
    blocks = getattr(st, "st_blocks", None)
    return blocks * 512 if blocks is not None else st.st_size


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cache_entries(root: Path) -> list[tuple[Path, os.stat_result]]:
    """The cached artifacts under ``root`` with their stat, least recently used first (read-only)."""
    out = []
    try:
        paths = list(Path(root).iterdir())
    except FileNotFoundError:
        return []
    for p in paths:
        if len(p.stem) != 64 or p.suffix not in (".onnx", ".tflite"):
            continue
        try:
            st = p.stat()
        except FileNotFoundError:  # evicted or removed meanwhile
            continue
        if p.is_file():
            out.append((p, st))
    return sorted(out, key=lambda e: (e[1].st_mtime, e[0].name))


class ArtifactCache:
    """Content-addressed files ``<root>/<sha256>.<format>``, LRU-evicted (never pinned files)."""

    def __init__(
        self,
        root: Path,
        max_bytes: int,
        *,
        clock: Callable[[], str] = utc_now,
        free_bytes: Callable[[Path], int] = disk_free,
    ):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.partial_dir = self.root / "partial"
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.free_bytes = free_bytes
        self.evictions = EvictionLog(self.root / EVICTIONS_FILE, clock=clock)
        self._lock = threading.RLock()
        self._pins: dict[str, int] = {}  # file name -> how many holders
        self._names: dict[str, str] = {}  # file name -> the artifact's name (for the eviction log)

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
        return [p for p, _ in cache_entries(self.root)]

    def total_bytes(self) -> int:
        return sum(st.st_size for _, st in cache_entries(self.root))

    # ------------------------------------------------------------------ pins
    @contextlib.contextmanager
    def pinned(self, refs: Iterable[ArtifactRef]) -> Iterator[None]:
        """While inside, the artifacts of ``refs`` (present or still to come) are never evicted."""
        refs = list(refs)
        names = [f"{r.sha256}.{r.format}" for r in refs]
        with self._lock:
            for ref, name in zip(refs, names, strict=True):
                self._pins[name] = self._pins.get(name, 0) + 1
                self._names[name] = ref.name
        try:
            yield
        finally:
            with self._lock:
                for name in names:
                    left = self._pins.get(name, 0) - 1
                    if left > 0:
                        self._pins[name] = left
                    else:
                        self._pins.pop(name, None)

    def is_pinned(self, path: Path) -> bool:
        with self._lock:
            return path.name in self._pins

    # ------------------------------------------------------------------ adopt / verify
    def adopt(self, assembled: Path, ref: ArtifactRef) -> Path:
        """Verify ``assembled`` against ``ref`` (size, sha256) and move it into the cache atomically.

        ``assembled`` is gone afterwards whatever happens: moved into the cache, or removed."""
        try:
            size = assembled.stat().st_size
            if size != ref.size_bytes:
                raise DeliveryError(f"{ref.name}: got {size} bytes, the job says {ref.size_bytes}")
            actual = sha256_file(assembled)
            if actual != ref.sha256:
                raise DeliveryError(
                    f"{ref.name}: sha256 mismatch (expected {ref.sha256[:12]}..., got {actual[:12]}...)"
                )
            with open(assembled, "rb+") as f:
                os.fsync(f.fileno())
            final = self.path_for(ref.sha256, ref.format)
            os.replace(assembled, final)
            _fsync_dir(self.root)
        except OSError as exc:
            raise DeliveryError(f"{ref.name}: cannot store it in the cache: {exc.strerror or exc}") from None
        finally:
            with contextlib.suppress(OSError):
                assembled.unlink(missing_ok=True)
        with self._lock:
            self._names[final.name] = ref.name
        self.trim(keep={final})
        return final

    def verify(self, path: Path, ref: ArtifactRef) -> None:
        """Re-check a cached file; a corrupt one is removed."""
        with self._lock:
            self._names[path.name] = ref.name
        if path.stat().st_size != ref.size_bytes or sha256_file(path) != ref.sha256:
            path.unlink(missing_ok=True)
            raise DeliveryError(f"{ref.name}: cached copy is corrupt (removed); fetch it again")

    # ------------------------------------------------------------------ eviction
    def trim(self, keep: Iterable[Path] = ()) -> list[Eviction]:
        """Remove least recently used files until the cache fits ``max_bytes``."""
        keep = set(keep)
        with self._lock:
            entries = cache_entries(self.root)
            total = sum(st.st_size for _, st in entries)
            chosen = []
            for path, st in entries:
                if total <= self.max_bytes:
                    break
                if path in keep or path.name in self._pins:
                    continue
                total -= st.st_size
                chosen.append((path, st))
            return self._remove(chosen, "cache bound")

    def evict(self, need_bytes: int, keep: Iterable[Path] = (), reason: str = "disk room") -> list[Eviction]:
        """Free at least ``need_bytes`` of disk (least recently used first, never pinned or ``keep``
        files). Frees less, or nothing, when the cache holds no more that may go."""
        keep = set(keep)
        with self._lock:
            chosen, freed = [], 0
            for path, st in cache_entries(self.root):
                if freed >= need_bytes:
                    break
                if path in keep or path.name in self._pins:
                    continue
                chosen.append((path, st))
                freed += _disk_bytes(st)
            return self._remove(chosen, reason)

    def make_room(self, need_bytes: int, reason: str = "disk room", keep: Iterable[Path] = ()) -> int:
        """Evict what the file system lacks for ``need_bytes`` more (plus a margin); bytes freed."""
        try:
            lacking = need_bytes + ROOM_MARGIN - self.free_bytes(self.root)
        except OSError:
            lacking = need_bytes + ROOM_MARGIN
        if lacking <= 0:
            return 0
        return sum(e.bytes for e in self.evict(lacking, keep, reason))

    def free_for(self, need_bytes: int, what: str) -> int:
        """For a writer the disk just refused (ENOSPC): evict at least ``need_bytes`` plus a margin,
        whatever the file system says is free (SQLite needs room beyond its own estimate)."""
        return sum(e.bytes for e in self.evict(need_bytes + ROOM_MARGIN, reason=f"room for {what}"))

    def _remove(self, chosen: list[tuple[Path, os.stat_result]], reason: str) -> list[Eviction]:
        removed = []
        for path, st in chosen:
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot evict %s: %s", path, exc)
                continue
            name = self._names.pop(path.name, path.name)
            removed.append(Eviction(name, path.name, _disk_bytes(st), self.clock(), reason))
        if removed:
            self.evictions.record(removed)
            log.warning(
                "evicted %d cached artifact(s), %d bytes (%s): %s",
                len(removed),
                sum(e.bytes for e in removed),
                reason,
                ", ".join(e.name for e in removed),
            )
        return removed

    def clear_partials(self) -> list[Path]:
        """Remove partial downloads (what a killed agent left behind); call before any fetch starts."""
        removed = []
        for path in self.partial_dir.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
        if removed:
            log.warning("removed %d partial download(s) left by an earlier run", len(removed))
        return removed
