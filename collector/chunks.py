"""The chunk server: answers a device's ChunkRequest with ArtifactChunk payloads (QoS 1).

Artifacts are found by sha256 in the ``artifacts`` table (``path`` column) or in an explicit map
(``fleet push`` serves what it just registered). A file is re-hashed whenever its size or mtime
changes, and never served if its content no longer matches the sha256 the device asked for.
Requests are handled on a thread of their own so a large model never stalls ingest.
"""

from __future__ import annotations

import logging
import math
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from agent import topics
from agent.schema import ArtifactChunk, ChunkRequest
from collector.store import connect

log = logging.getLogger("edgebench.collector.chunks")

MAX_CHUNK = 4 * 1024 * 1024
MIN_CHUNK = 1024


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class ChunkServer:
    def __init__(
        self,
        db_path: str | Path | None = None,
        *,
        paths: Mapping[str, Path] | None = None,
        on_served: Callable[[ChunkRequest, int], None] | None = None,
    ):
        self.db_path = db_path
        self.paths = dict(paths or {})
        self.on_served = on_served
        self.chunks_served = 0
        self.requests = 0
        self.refused = 0
        self._verified: dict[str, tuple[int, int, Path]] = {}  # sha -> (size, mtime_ns, path)
        self._queue: queue.Queue[ChunkRequest | None] = queue.Queue()
        self._publish: Callable[..., object] | None = None
        self._conn: sqlite3.Connection | None = None
        self._thread = threading.Thread(target=self._loop, name="chunk-server", daemon=True)
        self._thread.start()

    def attach(self, client: object) -> None:
        """Publish with this paho client (any thread may publish)."""
        self._publish = client.publish  # type: ignore[attr-defined]

    def add(self, sha256: str, path: Path) -> None:
        self.paths[sha256] = Path(path)

    def handle(self, request: ChunkRequest) -> None:
        self._queue.put(request)

    def close(self, timeout_s: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout=timeout_s)

    # -- worker
    def _lookup(self, sha256: str) -> Path | None:
        if sha256 in self.paths:
            return self.paths[sha256]
        if self.db_path is None or not Path(self.db_path).exists():
            return None
        if self._conn is None:
            self._conn = connect(self.db_path, readonly=True)
        try:
            row = self._conn.execute("SELECT path FROM artifacts WHERE sha256 = ?", (sha256,)).fetchone()
        except sqlite3.Error as exc:
            log.warning("artifact lookup failed: %s", exc)
            return None
        return Path(row[0]) if row and row[0] else None

    def resolve(self, sha256: str) -> Path | None:
        """The file holding exactly this content, or None."""
        path = self._lookup(sha256)
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        known = self._verified.get(sha256)
        if known and known[:2] == (st.st_size, st.st_mtime_ns) and known[2] == path:
            return path
        if _sha256(path) != sha256:
            log.error("%s no longer matches sha256 %s; not serving it", path, sha256[:12])
            return None
        self._verified[sha256] = (st.st_size, st.st_mtime_ns, path)
        return path

    def serve(self, request: ChunkRequest) -> int:
        """Publish the requested chunks; return how many were sent (0 if refused)."""
        self.requests += 1
        if self._publish is None:
            raise RuntimeError("ChunkServer.attach(client) first")
        if not MIN_CHUNK <= request.chunk_size <= MAX_CHUNK:
            log.warning(
                "%s asked for chunk size %d (allowed %d..%d)",
                request.device_id,
                request.chunk_size,
                MIN_CHUNK,
                MAX_CHUNK,
            )
            self.refused += 1
            return 0
        path = self.resolve(request.sha256)
        if path is None:
            log.warning("%s asked for unknown artifact %s", request.device_id, request.sha256[:12])
            self.refused += 1
            return 0
        size = path.stat().st_size
        total = max(1, math.ceil(size / request.chunk_size))
        indices = [i for i in request.indices if 0 <= i < total] if request.indices else list(range(total))
        topic = topics.device_chunks(request.device_id)
        sent = 0
        with open(path, "rb") as fh:
            for index in sorted(set(indices)):
                fh.seek(index * request.chunk_size)
                data = fh.read(request.chunk_size)
                chunk = ArtifactChunk(request.sha256, index, total, size, data)
                self._publish(topic, chunk.to_bytes(), qos=1)
                sent += 1
        self.chunks_served += sent
        if self.on_served:
            self.on_served(request, sent)
        return sent

    def _loop(self) -> None:
        while True:
            request = self._queue.get()
            if request is None:
                break
            try:
                self.serve(request)
            except Exception:
                log.exception("serving %s to %s failed", request.sha256[:12], request.device_id)
        if self._conn is not None:
            self._conn.close()
