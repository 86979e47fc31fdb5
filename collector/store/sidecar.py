"""The writers' sidecar state files: ``<db>.collector/state-<client_id>.json``, one per writer process.

A writer says there whether it can write the database (and why not) and what the broker side says,
because the database is exactly what cannot be written while this matters. Each file is one padded
block written with write+rename, or overwritten in place on a full disk. Read by `collector status`
(:mod:`collector.ingest.health`), which never creates anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("edgebench.collector")

__all__ = [
    "FULL",
    "IO_ERROR",
    "MISSING",
    "OK",
    "READ_ONLY",
    "REPLACED",
    "STOPPED",
    "SUBSCRIBED",
    "WAITING",
    "WriterState",
    "pid_alive",
    "read_states",
    "state_dir",
    "state_line",
    "write_state_file",
]

OK, MISSING, REPLACED, READ_ONLY, FULL, IO_ERROR, WAITING = (
    "ok", "missing", "replaced", "read-only", "full", "io-error", "waiting",
)  # fmt: skip
STOPPED = "stopped"
SUBSCRIBED = "subscribed"
_STATE_BYTES = 4096


@dataclass(frozen=True)
class WriterState:
    """What one collector writer (process) says about its database, from its sidecar file."""

    client_id: str
    pid: int
    db_state: str  # ok | missing | replaced | read-only | full | io-error | waiting | stopped
    reason: str
    since: str
    updated_at: str
    db: str
    broker: str = ""  # "subscribed", "connected, not subscribed: ...", "disconnected" ("" before receipts)

    @property
    def subscribed(self) -> bool:
        return self.broker in ("", SUBSCRIBED)

    @property
    def writing(self) -> bool:
        return self.db_state in (OK, STOPPED)


def state_dir(db_path: str | Path) -> Path:
    """``<db>.collector/``: writer states, salvages, the recovery lock."""
    p = Path(db_path)
    return p.with_name(p.name + ".collector")


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_states(db_path: str | Path) -> list[WriterState]:
    """Every writer's sidecar state (read-only: never creates anything)."""
    out = []
    for f in sorted(state_dir(db_path).glob("state-*.json")):
        try:
            d = json.loads(f.read_text())
            names = [k for k in WriterState.__dataclass_fields__ if k in d or k != "broker"]
            out.append(WriterState(**{k: d[k] for k in names}))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def write_state_file(directory: Path, client_id: str, data: dict[str, Any]) -> None:
    """Write ``state-<client_id>.json`` (atomic write+rename; in place when that fails). Never raises."""
    # Padded to one block, so that on a full disk (no room for a new file to rename) the same bytes
    # can still be overwritten in place: the state that matters most is "full".
    text = json.dumps(data).encode()
    blob = text + b" " * max(0, _STATE_BYTES - len(text))
    target = directory / f"state-{client_id}.json"
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    try:
        directory.mkdir(exist_ok=True)
        tmp.write_bytes(blob)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        try:
            fd = os.open(target, os.O_WRONLY)
            try:
                os.pwrite(fd, blob, 0)
            finally:
                os.close(fd)
        except OSError:  # a read-only file system: the log says it
            log.debug("state file not written: %s", exc)


def state_line(s: WriterState, now: datetime | None = None) -> str:
    """One line for `collector status` about a writer that is not writing."""
    alive = pid_alive(s.pid)
    what = {
        MISSING: "the database file is missing",
        REPLACED: "the database file was replaced",
        READ_ONLY: "the database is read-only",
        FULL: "the disk is full",
        IO_ERROR: "I/O error on the database",
        WAITING: "the database file was deleted or replaced; recovering",
    }.get(s.db_state, s.db_state)
    if not alive:
        return f"last run ({s.client_id}, pid {s.pid}, not running) ended with: {what} ({s.reason})"
    del now
    return (
        f"NOT WRITING: {what} since {s.since} (pid {s.pid}, {s.client_id}); nothing is acknowledged; "
        f"messages wait at the broker ({s.reason})"
    )
