"""The collector watches its database file: deleted, replaced, read-only, full, I/O errors.

The ingest writer asks :meth:`DbWatch.ensure` for its connection before each batch and
:meth:`DbWatch.settled` after each COMMIT (one ``os.stat`` and one ``os.access`` each), and reports
write errors to :meth:`DbWatch.failed`. The watch remembers ``(st_dev, st_ino)`` of the file it
opened and classifies what it finds:

- **deleted** (the path is gone): the committed rows still live in the open inode. Every process on
  it first *salvages* (sqlite3 backup API from its open connection into ``<db>.collector/salvage-*``,
  fsynced) and closes its connections; the last one to let go of the old inode (probed with F_GETLK on
  the SHARED-lock bytes every WAL connection holds) moves any stale ``-wal``/``-shm``
  aside and renames the salvage into place. Nobody installs a new file while another connection is
  still on the old inode: SQLite's last close deletes ``<db>-wal`` *by name*, which would be the new
  file's WAL.
- **replaced** (another inode at the path): the same, except that the salvage is merged into the new
  file (migrated first) with ``INSERT OR IGNORE`` (results by primary key, job events by their unique
  index, dead letters by content), then that file is used.
- **read-only / full / io-error**: nothing is written and nothing acknowledged; the connection is
  closed after a failure and reopened when the file is writable again (a connection opened on a
  read-only file stays read-only), so the collector recovers by itself.

Each writer publishes its state in ``<db>.collector/state-<client_id>.json`` (atomic write+rename),
because the database is exactly what cannot be written while this matters. That directory also
marks that a collector has used a database here: a later start on a missing file is an error unless
creating an empty one is asked for (``collector serve --create-db``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import sqlite3
import struct
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from collector.store.sqlite import open_db
from wire.errors import EdgebenchError
from wire.schema import utc_now

log = logging.getLogger("edgebench.collector")
T = TypeVar("T")

__all__ = [
    "DbWatch",
    "DbWatchError",
    "check_database",
    "require_db",
    "WriterState",
    "pid_alive",
    "read_states",
    "state_dir",
]

OK, MISSING, REPLACED, READ_ONLY, FULL, IO_ERROR, WAITING = (
    "ok", "missing", "replaced", "read-only", "full", "io-error", "waiting",
)  # fmt: skip
STOPPED = "stopped"
SUBSCRIBED = "subscribed"
_STATE_BYTES = 4096
_SHARED_FIRST, _SHARED_SIZE = 0x40000002, 510  # SQLite's unix VFS lock bytes
_MERGE_TABLES = ("results", "job_events", "devices", "jobs", "artifacts")


class DbWatchError(EdgebenchError, RuntimeError):
    """The database cannot be used and waiting will not help (missing where one existed, not a database)."""


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


def require_db(path: str | Path, *, create: bool = False) -> None:
    """DbWatchError if ``path`` is missing although a collector has used a database there before
    (its ``<db>.collector/`` directory exists) and ``create`` is not set. A first run creates it."""
    if not Path(path).exists() and state_dir(path).is_dir() and not create:
        raise DbWatchError(
            f"no database at {path}, but a collector has used one there ({state_dir(path)} exists); "
            "restore the file, or pass --create-db to start an empty one"
        )


def check_database(path: str | Path, *, create: bool = False) -> None:
    """Open (create, migrate) once and close: DbWatchError if waiting would not help. A read-only,
    full or failing file passes (the writers wait for it and say so)."""
    require_db(path, create=create)
    if Path(path).exists() and not os.access(path, os.W_OK):
        return
    try:
        open_db(path).close()
    except Exception as exc:
        if _hopeless(exc) or not Path(path).exists():
            raise DbWatchError(str(exc)) from None
        log.error("database %s cannot be written now (%s); the writers retry", path, exc)
        return
    state_dir(path).mkdir(exist_ok=True)


def _classify(exc: BaseException) -> str:
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return "busy"
    if "readonly" in text or "read-only" in text or getattr(exc, "errno", None) == errno.EROFS:
        return READ_ONLY
    if "full" in text or getattr(exc, "errno", None) == errno.ENOSPC:
        return FULL
    return IO_ERROR


def _hopeless(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "wal mode" in text or "newer" in text


def _uri(path: str | Path, mode: str) -> str:
    return f"file:{urllib.parse.quote(str(Path(path).resolve()))}?mode={mode}"


def _fsync_path(path: str | Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


class DbWatch:
    """Owns the writer's connection (and auxiliary ones) to ``path``; see the module docstring."""

    def __init__(self, path: str | Path, client_id: str, *, create: bool = False, cache_kib: int = 32768):
        self.path = Path(path)
        self.client_id = client_id
        self.create = create
        self.cache_kib = cache_kib
        self.dir = state_dir(path)
        self.db: sqlite_utils.Database | None = None
        self.state, self.reason, self.since = OK, "", utc_now()
        self._identity: tuple[int, int] | None = None
        self._sides: dict[str, tuple[int, int]] = {}  # -wal / -shm of the opened file
        self._probe_fd: int | None = None  # an fd on the opened inode: lock probe; closed after the conns
        self._old: tuple[int, int] | None = None  # inode we let go of and are recovering from
        self._lock = threading.RLock()  # guards the aux connection against a switch
        self._aux: sqlite3.Connection | None = None
        self._aux_identity: tuple[int, int] | None = None
        self._last_state_write = 0.0

    # ------------------------------------------------------------ open / close
    @property
    def conn(self) -> sqlite3.Connection | None:
        return self.db.conn if self.db is not None else None

    def open(self) -> sqlite_utils.Database | None:
        """First open. DbWatchError if the file is missing where a collector used one before (unless
        ``create``) or is not a usable database; a read-only / full / failing file only sets the state
        (the writer retries). Returns the database, or None while it cannot be written."""
        require_db(self.path, create=self.create)
        self._reopen(first=True)
        return self.db

    def _reopen(self, *, first: bool = False) -> bool:
        with self._lock:
            self._close_conns()
            if not os.access(self.path, os.W_OK) and self.path.exists():
                self._set(READ_ONLY, f"database {self.path} is read-only")
                return False
            try:
                db = open_db(self.path)
                db.conn.execute(f"PRAGMA cache_size = -{self.cache_kib}")
                # No automatic checkpoint inside our commits: the ingest checkpointer runs them.
                db.conn.execute("PRAGMA wal_autocheckpoint = 0")
                st = os.stat(self.path)
            except Exception as exc:  # StoreError, MigrationError, sqlite3.Error, OSError
                kind = _classify(exc)
                if first and _hopeless(exc):
                    raise DbWatchError(str(exc)) from None  # waiting will not help
                with contextlib.suppress(Exception):
                    db.close()  # type: ignore[possibly-undefined]
                self._set(kind if kind != "busy" else IO_ERROR, str(exc))
                return False
            self.dir.mkdir(exist_ok=True)
            if self._identity != _identity(st):
                self._close_probe()
                self._probe_fd = os.open(self.path, os.O_RDONLY)
                self._identity = _identity(st)
            self._sides = {}
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(OSError):
                    self._sides[suffix] = _identity(os.stat(f"{self.path}{suffix}"))
            self.db = db
            if self.state in (FULL, IO_ERROR):  # opening proves little: a commit says it is over
                self._set(self.state, f"{self.reason}; reopened, retrying")
            else:
                self._set(OK, "")
            return True

    def _close_conns(self) -> None:
        with self._lock:
            for conn in (self._aux, self.conn):
                if conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
            self._aux = self._aux_identity = None
            self.db = None

    def _close_probe(self) -> None:
        # Only after every connection of this process on that inode is closed: closing any fd of a
        # file drops all of the process's POSIX locks on it (SQLite's among them).
        if self._probe_fd is not None:
            os.close(self._probe_fd)
            self._probe_fd = None

    def close(self) -> None:
        self._close_conns()
        if self._old is None:
            self._close_probe()
        if self.state == OK:
            self._set(STOPPED, "")
        else:
            self._write_state()

    @contextlib.contextmanager
    def aux(self) -> Iterator[sqlite3.Connection | None]:
        """A second connection (the checkpointer's) on the current file; None while not writing."""
        with self._lock:
            if self.state != OK or self.db is None:
                yield None
                return
            if self._aux is None or self._aux_identity != self._identity:
                if self._aux is not None:
                    self._aux.close()
                    self._aux = None
                try:  # mode=rw: never creates the file (it may have just been deleted)
                    aux = sqlite3.connect(
                        _uri(self.path, "rw"), uri=True, timeout=30.0, check_same_thread=False
                    )
                    aux.execute("PRAGMA busy_timeout = 30000")
                except sqlite3.Error as exc:
                    log.debug("auxiliary connection not opened: %s", exc)
                    yield None
                    return
                self._aux, self._aux_identity = aux, self._identity
            yield self._aux

    # ------------------------------------------------------------ checks
    def check(self) -> str:
        """ok / missing / replaced / read-only (cheap: one stat, one access)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return MISSING
        except OSError:
            return IO_ERROR
        if self._identity is not None and _identity(st) != self._identity:
            return REPLACED
        if not os.access(self.path, os.W_OK):
            return READ_ONLY
        return OK

    def ensure(self) -> sqlite3.Connection | None:
        """The connection to write to, on the file at ``path``, or None (state says why)."""
        if self.state == OK and self.db is not None:
            found = self.check()
            if found == OK:
                return self.db.conn
        else:
            found = self.check()
        if found in (MISSING, REPLACED) or self._old is not None:
            if not self._recover(found):
                return None
            found = self.check()
        if found == READ_ONLY:
            if self.state != READ_ONLY:
                self._close_conns()
                self._set(READ_ONLY, f"database {self.path} is read-only")
            return None
        if self.db is None and not self._reopen():
            return None
        return self.db.conn if self.db is not None else None

    def settled(self) -> bool:
        """After a COMMIT: is it in the file at ``path``? If that file went away meanwhile, the commit is
        in the salvage that recovery installs: True once it is installed (then acknowledge)."""
        if self._old is None and self.check() not in (MISSING, REPLACED):
            return True
        return self._recover(self.check()) and self._old is None

    def write(self, fn: Callable[[sqlite3.Connection], T], stop: threading.Event) -> T:
        """Run ``fn(conn)`` (one transaction, committed inside) until it has committed to the file at
        ``path``; only then return (then acknowledge). While the database cannot be written (read-only,
        full, I/O errors, locked, deleted or replaced and not yet recovered): retry with backoff
        (0.05 s doubling to 10 s), reopening after a failure. Once ``stop`` is set it gives up after a
        few quick attempts with DbWatchError: nothing was acknowledged, the broker redelivers."""
        delay = 0.05

        def backoff(why: str) -> None:
            nonlocal delay
            log.warning("database not written (%s); retrying in %.1fs", why, delay)
            if stop.wait(delay) and delay > 5:
                raise DbWatchError(f"stopped while the database cannot be written ({why})")
            delay = min(delay * 2, 10.0)

        while True:
            conn = self.ensure()
            if conn is None:
                backoff(f"{self.state}: {self.reason}")
                continue
            try:
                result = fn(conn)
            except sqlite3.OperationalError as exc:
                self.failed(exc)
                backoff(str(exc))
                continue
            # Committed. If the file was deleted or replaced meanwhile, the commit went to the old
            # inode: return only once recovery has put it into the file at the path.
            while not self.settled():
                backoff(f"{self.state}: {self.reason}")
            self.committed()
            return result

    def committed(self) -> None:
        """A transaction committed to the file at ``path``: a full disk or I/O error is over."""
        if self.state != OK:
            self._set(OK, "")

    def failed(self, exc: sqlite3.Error) -> str:
        """A write failed: "busy" (keep the connection, retry) or a fault (closed; reopened later)."""
        kind = _classify(exc)
        if kind == "busy":
            return kind
        found = self.check()
        if found in (MISSING, REPLACED):
            return found  # ensure() recovers on the next attempt
        self._close_conns()
        self._set(kind, f"write failed: {exc}")
        return kind

    # ------------------------------------------------------------ deleted / replaced
    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        self.dir.mkdir(exist_ok=True)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _others_hold_old(self) -> bool:
        if self._probe_fd is None:
            return False
        # F_GETLK: other processes only (this one's read-only connections, e.g. the chunk server's,
        # never delete anything on close; its writer and checkpointer connections are closed).
        flock = struct.pack("hhqqi", fcntl.F_WRLCK, 0, _SHARED_FIRST, _SHARED_SIZE, 0)
        try:
            got = fcntl.fcntl(self._probe_fd, fcntl.F_GETLK, flock)
        except OSError:
            return False
        return struct.unpack("hhqqi", got)[0] != fcntl.F_UNLCK

    def _salvage_path(self, ident: tuple[int, int]) -> Path:
        return self.dir / f"salvage-{ident[0]}-{ident[1]}.db"

    def _salvage(self) -> int:
        """Copy what the open connection sees (the old inode) into the salvage file, fsynced."""
        assert self.db is not None and self._identity is not None
        target = self._salvage_path(self._identity)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        tmp.unlink(missing_ok=True)
        dst = sqlite3.connect(tmp)
        try:
            self.db.conn.backup(dst)
            n = int(dst.execute("SELECT COUNT(*) FROM results").fetchone()[0])
        finally:
            dst.close()
        _fsync_path(tmp)
        os.replace(tmp, target)
        _fsync_path(self.dir, directory=True)
        return n

    def _recover(self, found: str) -> bool:
        """Salvage, let go, and (when last on the old inode) install or merge; True when writing again."""
        with self._lock, self._flock():
            if self._old is None:
                what = "deleted" if found == MISSING else "replaced by another file"
                log.error(
                    "DATABASE FILE %s WAS %s WHILE RUNNING: nothing is acknowledged until it is back",
                    self.path, what.upper(),
                )  # fmt: skip
                if self.db is not None:
                    try:
                        n = self._salvage()
                    except (sqlite3.Error, OSError) as exc:
                        self._set(IO_ERROR, f"database file was {what}; salvage failed: {exc}")
                        return False
                    log.error("salvaged %d results from the open connection into %s", n, self.dir)
                self._old = self._identity
                self._close_conns()
            if self._others_hold_old():
                self._set(WAITING, "database file was deleted or replaced; waiting for the other "
                          "connections to the old file to close (other workers recover it)")  # fmt: skip
                return False
            self._close_probe()
            self._install()
        return self._reopen()

    def _install(self) -> None:
        assert self._old is not None
        salvage = self._salvage_path(self._old)
        done = salvage.with_suffix(".done")
        if not salvage.exists():
            # Another worker installed or merged it already (or there was nothing to salvage).
            self._old = None
            return
        missing = not self.path.exists()
        for suffix in ("-wal", "-shm"):
            # The old file's -wal/-shm outlive it when its last connection could not delete them (a
            # read-only reader closed last): beside another file they would be read as its WAL. Set
            # them aside; and when the path is empty, whatever is there belongs to nobody.
            side = Path(f"{self.path}{suffix}")
            with contextlib.suppress(FileNotFoundError):
                if missing or _identity(os.stat(side)) == self._sides.get(suffix):
                    os.replace(side, self.dir / f"stale-{self._old[1]}{suffix}")
        if missing:
            n = int(_count(salvage))
            os.replace(salvage, self.path)
            _fsync_path(self.path.parent, directory=True)
            log.error(
                "database file was deleted while running; restored from the open connection: %d results",
                n,
            )
        else:
            n = _merge(salvage, self.path)
            salvage.unlink()
            log.error(
                "database file was replaced while running; merged %d results from the old file into the "
                "new one; now writing to the new file",
                n,
            )
        done.write_text(json.dumps({"at": utc_now(), "results": n, "pid": os.getpid()}))
        self._old = None

    # ------------------------------------------------------------ state sidecar
    def _set(self, state: str, reason: str) -> None:
        if state != self.state:
            if state not in (OK, STOPPED):
                log.error("NOT WRITING: %s (%s); nothing is acknowledged", state, reason)
            elif self.state not in (OK, STOPPED):
                log.warning("database %s is writable again (was %s); writing resumes", self.path, self.state)
            self.state, self.since = state, utc_now()
        self.reason = reason
        self._write_state()

    broker_state = "disconnected"

    def set_broker(self, state: str) -> None:
        """What the MQTT side says (the network thread): written to the sidecar at once."""
        if state != self.broker_state:
            self.broker_state = state
            self._write_state()

    def heartbeat(self, every_s: float, now: float) -> None:
        """Refresh the sidecar's updated_at at most every ``every_s`` (the writer's idle tick)."""
        if now - self._last_state_write >= every_s:
            self._last_state_write = now
            self._write_state()

    def _write_state(self) -> None:
        data: dict[str, Any] = {
            "client_id": self.client_id,
            "pid": os.getpid(),
            "db_state": self.state,
            "reason": self.reason,
            "since": self.since,
            "updated_at": utc_now(),
            "db": str(self.path),
            "broker": self.broker_state,
        }
        # Padded to one block, so that on a full disk (no room for a new file to rename) the same bytes
        # can still be overwritten in place: the state that matters most is "full".
        text = json.dumps(data).encode()
        blob = text + b" " * max(0, _STATE_BYTES - len(text))
        target = self.dir / f"state-{self.client_id}.json"
        try:
            self.dir.mkdir(exist_ok=True)
            tmp = target.with_suffix(f".tmp{os.getpid()}")
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


def _count(path: Path) -> int:
    conn = sqlite3.connect(_uri(path, "ro"), uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])
    finally:
        conn.close()


def _merge(salvage: Path, path: Path) -> int:
    """Migrate the file at ``path`` and copy into it what the salvage has and it lacks."""
    db = open_db(path)
    conn = db.conn
    try:
        conn.execute("ATTACH DATABASE ? AS old", (str(salvage),))
        conn.execute("BEGIN IMMEDIATE")
        before = int(conn.execute("SELECT COUNT(*) FROM main.results").fetchone()[0])
        for table in (*_MERGE_TABLES, "dead_letters"):
            main_cols = [r[1] for r in conn.execute(f"PRAGMA main.table_info([{table}])")]
            old_cols = {r[1] for r in conn.execute(f"PRAGMA old.table_info([{table}])")}
            cols = [c for c in main_cols if c in old_cols and c != "id"]
            if not cols:
                continue
            names = ", ".join(f"[{c}]" for c in cols)
            if table == "dead_letters":  # no natural key: skip rows the file already has
                match = " AND ".join(f"d.[{c}] IS o.[{c}]" for c in cols)
                conn.execute(
                    f"INSERT INTO main.dead_letters ({names}) SELECT {names} FROM old.dead_letters o "
                    f"WHERE NOT EXISTS (SELECT 1 FROM main.dead_letters d WHERE {match}) ORDER BY o.id"
                )
            else:
                order = " ORDER BY id" if "id" in old_cols else ""
                conn.execute(
                    f"INSERT OR IGNORE INTO main.[{table}] ({names}) SELECT {names} FROM old.[{table}]{order}"
                )
        after = int(conn.execute("SELECT COUNT(*) FROM main.results").fetchone()[0])
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE old")
        return after - before
    finally:
        db.close()


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
