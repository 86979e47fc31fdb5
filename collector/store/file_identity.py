"""Which file is at the database path, and what a failed write says about it.

:func:`identity` is ``(st_dev, st_ino)``: the watch remembers it for the file it opened, and
:func:`check_path` compares (one ``os.stat``, one ``os.access``): ok / missing / replaced / read-only.
:func:`others_hold_shared_lock` asks (F_GETLK) whether another process still has a WAL connection on
an inode; :func:`classify_error` and :func:`hopeless` read SQLite's and the OS's errors.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import urllib.parse
from pathlib import Path

from collector.store.sidecar import FULL, IO_ERROR, MISSING, OK, READ_ONLY, REPLACED

__all__ = [
    "BUSY",
    "FileId",
    "check_path",
    "classify_error",
    "fsync_path",
    "hopeless",
    "identity",
    "others_hold_shared_lock",
    "sqlite_uri",
]

FileId = tuple[int, int]  # (st_dev, st_ino)
BUSY = "busy"  # locked by another connection: keep the connection, retry
_SHARED_FIRST, _SHARED_SIZE = 0x40000002, 510  # SQLite's unix VFS lock bytes


def identity(st: os.stat_result) -> FileId:
    return st.st_dev, st.st_ino


def check_path(path: Path, opened: FileId | None) -> str:
    """ok / missing / replaced (another inode than ``opened``) / read-only / io-error."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return MISSING
    except OSError:
        return IO_ERROR
    if opened is not None and identity(st) != opened:
        return REPLACED
    if not os.access(path, os.W_OK):
        return READ_ONLY
    return OK


def classify_error(exc: BaseException) -> str:
    """busy / read-only / full / io-error."""
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return BUSY
    if "readonly" in text or "read-only" in text or getattr(exc, "errno", None) == errno.EROFS:
        return READ_ONLY
    if "full" in text or getattr(exc, "errno", None) == errno.ENOSPC:
        return FULL
    return IO_ERROR


def hopeless(exc: BaseException) -> bool:
    """Waiting will not help: not a database, malformed, no WAL mode, newer schema."""
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "wal mode" in text or "newer" in text


def sqlite_uri(path: str | Path, mode: str) -> str:
    return f"file:{urllib.parse.quote(str(Path(path).resolve()))}?mode={mode}"


def fsync_path(path: str | Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def others_hold_shared_lock(probe_fd: int | None) -> bool:
    """Does another process hold SQLite's SHARED-lock bytes on the inode of ``probe_fd`` (every WAL
    connection does)? F_GETLK sees other processes only: this one's read-only connections (e.g. the
    chunk server's) never delete anything on close; its writer and checkpointer connections are closed."""
    if probe_fd is None:
        return False
    flock = struct.pack("hhqqi", fcntl.F_WRLCK, 0, _SHARED_FIRST, _SHARED_SIZE, 0)
    try:
        got = fcntl.fcntl(probe_fd, fcntl.F_GETLK, flock)
    except OSError:
        return False
    return struct.unpack("hhqqi", got)[0] != fcntl.F_UNLCK
