"""Durable store-and-forward outbox for everything the agent must not lose (results, job events).

Every message is written here first and leaves only when the broker acknowledges it (PUBACK with a
success reason code): :meth:`Outbox.ack`. paho-mqtt's own queue lives in memory and dies with the
process, so this is what survives kill -9, reboots and broker outages. The transport re-sends every
pending row in id order after each (re)connect.

* :class:`SqliteOutbox` - one SQLite file in WAL mode (``synchronous=FULL``), for the device.
* :class:`MemoryOutbox` - same behaviour, in memory (tests, tools that need no durability).

Bounded: at ``max_rows`` the oldest pending rows are dropped to make room and counted
(``stats().dropped``), never silently. A row the broker refuses (MQTT v5 reason code >= 0x80, e.g.
0x87 Not authorized) is moved aside with its reason (``stats().rejected``) and never re-sent.

A full disk raises :class:`OutboxFull` from :meth:`Outbox.put` and stores nothing; every row stored
before stays (the failed transaction rolls back). The service holds the message and retries.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger("edgebench.agent.outbox")

__all__ = [
    "MemoryOutbox",
    "Outbox",
    "OutboxError",
    "OutboxFull",
    "OutboxRow",
    "OutboxStats",
    "SqliteOutbox",
    "open_outbox",
    "read_stats",
]


class OutboxError(Exception):
    """The outbox cannot take a message (too large) or its file is unusable."""


class OutboxFull(OutboxError):
    """The disk (or the file system holding the outbox) is full: nothing was stored, retry later.

    Rows stored before stay intact (SQLite rolls the failed transaction back)."""


def _store_error(path: Path, exc: sqlite3.Error) -> OutboxError:
    """SQLITE_FULL (and an I/O error from ENOSPC) is the transient "disk full" case; the rest is fatal."""
    code = getattr(exc, "sqlite_errorcode", None)
    full = code == getattr(sqlite3, "SQLITE_FULL", 13) or "disk is full" in str(exc)
    return (OutboxFull if full else OutboxError)(f"outbox {path}: {exc}")


@dataclass(frozen=True)
class OutboxRow:
    id: int
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    dropped: int  # pushed out by the size bound
    rejected: int  # refused by the broker (reason code), kept aside
    acked: int  # left after a PUBACK
    last_reject_reason: str = ""


class Outbox(Protocol):
    max_rows: int
    max_payload_bytes: int

    def put(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int: ...
    def pending(self, after_id: int = 0, limit: int = 1000) -> list[OutboxRow]: ...
    def ack(self, row_id: int) -> bool: ...
    def reject(self, row_id: int, reason: str) -> bool: ...
    def stats(self) -> OutboxStats: ...
    def close(self) -> None: ...


def _check_put(outbox: Outbox, topic: str, payload: bytes, qos: int) -> None:
    if not topic or "+" in topic or "#" in topic:
        raise OutboxError(f"invalid topic {topic!r}")
    if qos not in (0, 1, 2):
        raise OutboxError(f"invalid qos {qos}")
    if len(payload) > outbox.max_payload_bytes:
        raise OutboxError(
            f"message of {len(payload)} bytes exceeds the payload limit of {outbox.max_payload_bytes} bytes"
        )


class MemoryOutbox:
    """In-memory outbox (not durable), behaviour identical to :class:`SqliteOutbox`."""

    def __init__(self, max_rows: int = 100_000, max_payload_bytes: int = 1024 * 1024):
        self.max_rows, self.max_payload_bytes = max_rows, max_payload_bytes
        self._rows: OrderedDict[int, OutboxRow] = OrderedDict()
        self._next = 1
        self._dropped = self._rejected = self._acked = 0
        self._last_reason = ""
        self._lock = threading.Lock()

    def put(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        _check_put(self, topic, payload, qos)
        with self._lock:
            while len(self._rows) >= self.max_rows:
                self._rows.popitem(last=False)
                self._dropped += 1
            row_id, self._next = self._next, self._next + 1
            self._rows[row_id] = OutboxRow(row_id, topic, bytes(payload), qos, retain)
            return row_id

    def pending(self, after_id: int = 0, limit: int = 1000) -> list[OutboxRow]:
        with self._lock:
            return [r for r in self._rows.values() if r.id > after_id][:limit]

    def ack(self, row_id: int) -> bool:
        with self._lock:
            if self._rows.pop(row_id, None) is None:
                return False
            self._acked += 1
            return True

    def reject(self, row_id: int, reason: str) -> bool:
        with self._lock:
            if self._rows.pop(row_id, None) is None:
                return False
            self._rejected += 1
            self._last_reason = reason
            return True

    def stats(self) -> OutboxStats:
        with self._lock:
            return OutboxStats(len(self._rows), self._dropped, self._rejected, self._acked, self._last_reason)

    def close(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL DEFAULT 1,
    retain INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL,
    rejected_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('dropped', 0), ('acked', 0);
"""


class SqliteOutbox:
    """Durable outbox: one SQLite file in WAL mode; each put/ack/reject is one committed transaction."""

    def __init__(self, path: str | Path, max_rows: int = 100_000, max_payload_bytes: int = 1024 * 1024):
        self.path = Path(path)
        self.max_rows, self.max_payload_bytes = max_rows, max_payload_bytes
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from None

    def _rollback(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:  # SQLite may have rolled back itself (SQLITE_FULL)
                log.warning("outbox %s: rollback: %s", self.path, exc)

    def _tx(self, *statements: tuple[str, tuple]) -> list[sqlite3.Cursor]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                out = [self._db.execute(sql, args) for sql, args in statements]
                self._db.execute("COMMIT")
                return out
            except sqlite3.Error as exc:
                self._rollback()
                raise _store_error(self.path, exc) from None

    def put(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        _check_put(self, topic, payload, qos)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                (count,) = self._db.execute("SELECT count(*) FROM outbox").fetchone()
                excess = count - self.max_rows + 1
                if excess > 0:
                    self._db.execute(
                        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)",
                        (excess,),
                    )
                    self._db.execute(
                        "UPDATE counters SET value = value + ? WHERE name = 'dropped'", (excess,)
                    )
                cur = self._db.execute(
                    "INSERT INTO outbox (topic, payload, qos, retain) VALUES (?, ?, ?, ?)",
                    (topic, bytes(payload), qos, int(retain)),
                )
                self._db.execute("COMMIT")
                return int(cur.lastrowid)
            except sqlite3.Error as exc:
                self._rollback()
                raise _store_error(self.path, exc) from None

    def pending(self, after_id: int = 0, limit: int = 1000) -> list[OutboxRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [OutboxRow(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows]

    def ack(self, row_id: int) -> bool:
        (cur, _) = self._tx(
            ("DELETE FROM outbox WHERE id = ?", (row_id,)),
            ("UPDATE counters SET value = value + changes() WHERE name = 'acked'", ()),
        )
        return cur.rowcount > 0

    def reject(self, row_id: int, reason: str) -> bool:
        (cur, _) = self._tx(
            (
                "INSERT OR REPLACE INTO rejected (id, topic, payload, reason) "
                "SELECT id, topic, payload, ? FROM outbox WHERE id = ?",
                (reason, row_id),
            ),
            ("DELETE FROM outbox WHERE id = ?", (row_id,)),
        )
        return cur.rowcount > 0

    def stats(self) -> OutboxStats:
        with self._lock:
            return _stats(self._db)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def read_stats(path: str | Path) -> OutboxStats:
    """The stats of an outbox file without writing to it (works on a full disk, beside a running agent)."""
    try:
        db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        raise OutboxError(f"cannot read outbox {path}: {exc}") from None
    try:
        return _stats(db)
    except sqlite3.Error as exc:
        raise OutboxError(f"cannot read outbox {path}: {exc}") from None
    finally:
        db.close()


def _stats(db: sqlite3.Connection) -> OutboxStats:
    (pending,) = db.execute("SELECT count(*) FROM outbox").fetchone()
    counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
    (rejected,) = db.execute("SELECT count(*) FROM rejected").fetchone()
    row = db.execute("SELECT reason FROM rejected ORDER BY rejected_at DESC, id DESC LIMIT 1").fetchone()
    return OutboxStats(pending, counters["dropped"], rejected, counters["acked"], row[0] if row else "")


def open_outbox(
    path: str | Path, max_rows: int = 100_000, max_payload_bytes: int = 1024 * 1024
) -> SqliteOutbox:
    return SqliteOutbox(path, max_rows=max_rows, max_payload_bytes=max_payload_bytes)
