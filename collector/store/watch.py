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

The pieces: :mod:`collector.store.file_identity` (which file is at the path, what an error means),
:mod:`collector.store.salvage` (restore or merge), :mod:`collector.store.sidecar` (the state files).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import sqlite_utils

from collector.store.file_identity import (
    BUSY,
    FileId,
    check_path,
    classify_error,
    hopeless,
    identity,
    others_hold_shared_lock,
    sqlite_uri,
)
from collector.store.salvage import install_salvage, recovery_lock, salvage
from collector.store.sidecar import (
    FULL,
    IO_ERROR,
    MISSING,
    OK,
    READ_ONLY,
    REPLACED,
    STOPPED,
    SUBSCRIBED,
    WAITING,
    WriterState,
    pid_alive,
    read_states,
    state_dir,
    state_line,
    write_state_file,
)
from collector.store.sqlite import open_db
from wire.errors import EdgebenchError
from wire.schema import utc_now

log = logging.getLogger("edgebench.collector")
T = TypeVar("T")

__all__ = [
    "SUBSCRIBED",
    "DbWatch",
    "DbWatchError",
    "WriterState",
    "check_database",
    "pid_alive",
    "read_states",
    "require_db",
    "state_dir",
    "state_line",
]


class DbWatchError(EdgebenchError, RuntimeError):
    """The database cannot be used and waiting will not help (missing where one existed, not a database)."""


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
        if hopeless(exc) or not Path(path).exists():
            raise DbWatchError(str(exc)) from None
        log.error("database %s cannot be written now (%s); the writers retry", path, exc)
        return
    state_dir(path).mkdir(exist_ok=True)


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
        self._identity: FileId | None = None
        self._sides: dict[str, FileId] = {}  # -wal / -shm of the opened file
        self._probe_fd: int | None = None  # an fd on the opened inode: lock probe; closed after the conns
        self._old: FileId | None = None  # inode we let go of and are recovering from
        self._lock = threading.RLock()  # guards the aux connection against a switch
        self._aux: sqlite3.Connection | None = None
        self._aux_identity: FileId | None = None
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
                kind = classify_error(exc)
                if first and hopeless(exc):
                    raise DbWatchError(str(exc)) from None  # waiting will not help
                with contextlib.suppress(Exception):
                    db.close()  # type: ignore[possibly-undefined]
                self._set(kind if kind != BUSY else IO_ERROR, str(exc))
                return False
            self.dir.mkdir(exist_ok=True)
            if self._identity != identity(st):
                self._close_probe()
                self._probe_fd = os.open(self.path, os.O_RDONLY)
                self._identity = identity(st)
            self._sides = {}
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(OSError):
                    self._sides[suffix] = identity(os.stat(f"{self.path}{suffix}"))
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
                        sqlite_uri(self.path, "rw"), uri=True, timeout=30.0, check_same_thread=False
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
        return check_path(self.path, self._identity)

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
        kind = classify_error(exc)
        if kind == BUSY:
            return kind
        found = self.check()
        if found in (MISSING, REPLACED):
            return found  # ensure() recovers on the next attempt
        self._close_conns()
        self._set(kind, f"write failed: {exc}")
        return kind

    # ------------------------------------------------------------ deleted / replaced
    def _recover(self, found: str) -> bool:
        """Salvage, let go, and (when last on the old inode) install or merge; True when writing again."""
        with self._lock, recovery_lock(self.dir):
            if self._old is None:
                what = "deleted" if found == MISSING else "replaced by another file"
                log.error(
                    "DATABASE FILE %s WAS %s WHILE RUNNING: nothing is acknowledged until it is back",
                    self.path, what.upper(),
                )  # fmt: skip
                if self.db is not None:
                    assert self._identity is not None
                    try:
                        n = salvage(self.db.conn, self.dir, self._identity)
                    except (sqlite3.Error, OSError) as exc:
                        self._set(IO_ERROR, f"database file was {what}; salvage failed: {exc}")
                        return False
                    log.error("salvaged %d results from the open connection into %s", n, self.dir)
                self._old = self._identity
                self._close_conns()
            if others_hold_shared_lock(self._probe_fd):
                self._set(WAITING, "database file was deleted or replaced; waiting for the other "
                          "connections to the old file to close (other workers recover it)")  # fmt: skip
                return False
            self._close_probe()
            install_salvage(self.path, self.dir, self._old, self._sides)
            self._old = None
        return self._reopen()

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
        write_state_file(
            self.dir,
            self.client_id,
            {
                "client_id": self.client_id,
                "pid": os.getpid(),
                "db_state": self.state,
                "reason": self.reason,
                "since": self.since,
                "updated_at": utc_now(),
                "db": str(self.path),
                "broker": self.broker_state,
            },
        )
