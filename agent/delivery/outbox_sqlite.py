"""The device's durable outbox: one SQLite file in WAL mode (``synchronous=FULL``); each put, ack and
reject is one committed transaction. A full disk is :class:`~agent.delivery.outbox_protocol.OutboxFull`
(transient: retry), any other SQLite failure :class:`~agent.delivery.outbox_protocol.OutboxError`.

The design (receipts, bounds, full disk) is in :mod:`agent.delivery.outbox`.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
from pathlib import Path

from agent.delivery.outbox_protocol import OutboxError, OutboxFull, OutboxRow, OutboxStats, check_put

log = logging.getLogger("edgebench.agent.outbox")

__all__ = ["SqliteOutbox", "open_outbox", "read_stats"]


_SQLITE_FULL, _SQLITE_IOERR = 13, 10  # primary result codes (the low byte of the extended code)


def _disk_full(path: Path) -> bool:
    try:
        return shutil.disk_usage(path.parent).free < 64 * 1024
    except OSError:
        return False


def _store_error(path: Path, exc: sqlite3.Error) -> OutboxError:
    """SQLITE_FULL, and an I/O error while the file system has no room (SQLite reports ENOSPC during a
    journal or WAL write as SQLITE_IOERR_*), are the transient "disk full" case; the rest is fatal."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    full = code == _SQLITE_FULL or "disk is full" in str(exc)
    full = full or ((code == _SQLITE_IOERR or "disk I/O error" in str(exc)) and _disk_full(path))
    return (OutboxFull if full else OutboxError)(f"outbox {path}: {exc}")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL DEFAULT 1,
    retain INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    key TEXT,
    sent INTEGER NOT NULL DEFAULT 0
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
# Outboxes written before receipts have neither column; their rows keep key NULL (leave on PUBACK).
_ADDED_COLUMNS = (("key", "TEXT"), ("sent", "INTEGER NOT NULL DEFAULT 0"))
_KEY_INDEX = "CREATE INDEX IF NOT EXISTS idx_outbox_key ON outbox(key) WHERE key IS NOT NULL"
_SQL_CHUNK = 500  # keys per IN (...) statement


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
            have = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
            for name, decl in _ADDED_COLUMNS:
                if name not in have:
                    self._db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {decl}")
            self._db.execute(_KEY_INDEX)
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

    def put(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, key: str | None = None
    ) -> int:
        check_put(self, topic, payload, qos)
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
                    "INSERT INTO outbox (topic, payload, qos, retain, key) VALUES (?, ?, ?, ?, ?)",
                    (topic, bytes(payload), qos, int(retain), key),
                )
                self._db.execute("COMMIT")
                return int(cur.lastrowid)
            except sqlite3.Error as exc:
                self._rollback()
                raise _store_error(self.path, exc) from None

    def pending(self, after_id: int = 0, limit: int = 1000) -> list[OutboxRow]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_ROW_COLUMNS} FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            ).fetchall()
        return [_row(r) for r in rows]

    def rows(self, row_ids: list[int]) -> list[OutboxRow]:
        out: list[OutboxRow] = []
        with self._lock:
            for part in _chunks(sorted(row_ids)):
                marks = ",".join("?" * len(part))
                sql = f"SELECT {_ROW_COLUMNS} FROM outbox WHERE id IN ({marks}) ORDER BY id"
                out += [_row(r) for r in self._db.execute(sql, part).fetchall()]
        return out

    def ack(self, row_id: int) -> bool:
        (cur, _) = self._tx(
            ("DELETE FROM outbox WHERE id = ?", (row_id,)),
            ("UPDATE counters SET value = value + changes() WHERE name = 'acked'", ()),
        )
        return cur.rowcount > 0

    def mark_sent(self, row_id: int) -> bool:
        (cur,) = self._tx(("UPDATE outbox SET sent = 1 WHERE id = ?", (row_id,)))
        return cur.rowcount > 0

    def _take_by_keys(self, keys: list[str], reasons: dict[str, str] | None) -> list[int]:
        """Delete the rows with these keys (into `rejected` when ``reasons``) in one transaction."""
        removed: list[int] = []
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for part in _chunks(keys):
                    marks = ",".join("?" * len(part))
                    found = self._db.execute(
                        f"SELECT id, key FROM outbox WHERE key IN ({marks})", part
                    ).fetchall()
                    if not found:
                        continue
                    ids = [r[0] for r in found]
                    id_marks = ",".join("?" * len(ids))
                    if reasons is not None:
                        self._db.executemany(
                            "INSERT OR REPLACE INTO rejected (id, topic, payload, reason) "
                            "SELECT id, topic, payload, ? FROM outbox WHERE id = ?",
                            [(reasons[k], i) for i, k in found],
                        )
                    else:
                        self._db.execute(
                            "UPDATE counters SET value = value + ? WHERE name = 'acked'", (len(ids),)
                        )
                    self._db.execute(f"DELETE FROM outbox WHERE id IN ({id_marks})", ids)
                    removed += ids
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise _store_error(self.path, exc) from None
        return removed

    def confirm(self, keys: list[str]) -> list[int]:
        return self._take_by_keys(list(dict.fromkeys(keys)), None)

    def reject_keys(self, rejections: list[tuple[str, str]]) -> list[int]:
        reasons = dict(rejections)
        return self._take_by_keys(list(reasons), reasons)

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


_ROW_COLUMNS = "id, topic, payload, qos, retain, key"


def _row(r: tuple) -> OutboxRow:
    return OutboxRow(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5])


def _chunks(values: list) -> list[list]:
    return [values[i : i + _SQL_CHUNK] for i in range(0, len(values), _SQL_CHUNK)]


def _stats(db: sqlite3.Connection) -> OutboxStats:
    (pending,) = db.execute("SELECT count(*) FROM outbox").fetchone()
    has_sent = any(row[1] == "sent" for row in db.execute("PRAGMA table_info(outbox)"))
    (unconfirmed,) = db.execute("SELECT count(*) FROM outbox WHERE sent = 1").fetchone() if has_sent else (0,)
    counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
    (rejected,) = db.execute("SELECT count(*) FROM rejected").fetchone()
    row = db.execute("SELECT reason FROM rejected ORDER BY rejected_at DESC, id DESC LIMIT 1").fetchone()
    return OutboxStats(
        pending, counters["dropped"], rejected, counters["acked"], row[0] if row else "", unconfirmed
    )


def open_outbox(
    path: str | Path, max_rows: int = 100_000, max_payload_bytes: int = 1024 * 1024
) -> SqliteOutbox:
    return SqliteOutbox(path, max_rows=max_rows, max_payload_bytes=max_payload_bytes)
