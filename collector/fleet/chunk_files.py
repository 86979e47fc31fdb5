"""Where the chunk server reads artifacts from: by sha256, from an explicit map or the ``artifacts`` table,
verified against the sha256 (re-hashed whenever size or mtime change), read chunk by chunk when sent."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from collector.store.sqlite import connect

__all__ = ["ArtifactFiles", "sha256_of"]

log = logging.getLogger("edgebench.collector.chunks")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class ArtifactFiles:
    """Not thread-safe: the chunk server calls it under its lock."""

    def __init__(
        self, db_path: str | Path | None = None, paths: Mapping[str, Path] | None = None, max_open: int = 16
    ):
        self.db_path = db_path
        self.paths = {k: Path(v) for k, v in (paths or {}).items()}
        self.max_open = max_open
        self._verified: dict[str, tuple[int, int, Path]] = {}  # sha -> (size, mtime_ns, path)
        self._open: OrderedDict[Path, BinaryIO] = OrderedDict()
        self._conn: sqlite3.Connection | None = None

    def lookup(self, sha256: str) -> Path | None:
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
        path = self.lookup(sha256)
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        known = self._verified.get(sha256)
        if known and known[:2] == (st.st_size, st.st_mtime_ns) and known[2] == path:
            return path
        if sha256_of(path) != sha256:
            log.error("%s no longer matches sha256 %s; not serving it", path, sha256[:12])
            return None
        self._verified[sha256] = (st.st_size, st.st_mtime_ns, path)
        return path

    def read(self, path: Path, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` (files are kept open, the ``max_open`` most recent ones)."""
        fh = self._open.get(path)
        if fh is None:
            fh = open(path, "rb")  # noqa: SIM115 - kept open across chunks, closed in close()
            self._open[path] = fh
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)[1].close()
        self._open.move_to_end(path)
        fh.seek(offset)
        return fh.read(size)

    def close(self) -> None:
        for fh in self._open.values():
            fh.close()
        self._open.clear()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
