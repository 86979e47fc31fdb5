"""Restore or merge a database file that was deleted or replaced while the collector had it open.

The committed rows still live in the open inode. :func:`salvage` copies them (sqlite3 backup API from
the open connection) into ``<db>.collector/salvage-<dev>-<ino>.db``, fsynced. Once no process is on
the old inode any more, :func:`install_salvage` renames the salvage into place (the path is empty)
or merges it into the file now at the path (migrated first; ``INSERT OR IGNORE``: results by primary
key, job events by their unique index, dead letters by content). Whoever installs holds
:func:`recovery_lock`; a salvage already gone means another writer installed it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from collector.store.file_identity import FileId, fsync_path, identity, sqlite_uri
from collector.store.sqlite import open_db
from wire.schema import utc_now

log = logging.getLogger("edgebench.collector")

__all__ = ["install_salvage", "merge_salvage", "recovery_lock", "salvage", "salvage_path"]

_MERGE_TABLES = ("results", "job_events", "devices", "jobs", "artifacts")


@contextlib.contextmanager
def recovery_lock(directory: Path) -> Iterator[None]:
    """``<db>.collector/lock``, exclusive (flock): one writer recovers at a time."""
    directory.mkdir(exist_ok=True)
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def salvage_path(directory: Path, ident: FileId) -> Path:
    return directory / f"salvage-{ident[0]}-{ident[1]}.db"


def salvage(conn: sqlite3.Connection, directory: Path, ident: FileId) -> int:
    """Copy what ``conn`` sees (the old inode ``ident``) into its salvage file, fsynced; the result count."""
    target = salvage_path(directory, ident)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    dst = sqlite3.connect(tmp)
    try:
        conn.backup(dst)
        n = int(dst.execute("SELECT COUNT(*) FROM results").fetchone()[0])
    finally:
        dst.close()
    fsync_path(tmp)
    os.replace(tmp, target)
    fsync_path(directory, directory=True)
    return n


def install_salvage(path: Path, directory: Path, old: FileId, sides: dict[str, FileId]) -> None:
    """Put the salvage of inode ``old`` into the file at ``path`` (restore or merge); ``sides`` are the
    identities of the old file's ``-wal``/``-shm``. Nothing to do when another writer did it already."""
    salvaged = salvage_path(directory, old)
    if not salvaged.exists():
        return  # another worker installed or merged it already (or there was nothing to salvage)
    missing = not path.exists()
    for suffix in ("-wal", "-shm"):
        # The old file's -wal/-shm outlive it when its last connection could not delete them (a
        # read-only reader closed last): beside another file they would be read as its WAL. Set
        # them aside; and when the path is empty, whatever is there belongs to nobody.
        side = Path(f"{path}{suffix}")
        with contextlib.suppress(FileNotFoundError):
            if missing or identity(os.stat(side)) == sides.get(suffix):
                os.replace(side, directory / f"stale-{old[1]}{suffix}")
    if missing:
        n = _count(salvaged)
        os.replace(salvaged, path)
        fsync_path(path.parent, directory=True)
        log.error("database file was deleted while running; restored from the open connection: %d results", n)
    else:
        n = merge_salvage(salvaged, path)
        salvaged.unlink()
        log.error(
            "database file was replaced while running; merged %d results from the old file into the "
            "new one; now writing to the new file",
            n,
        )
    done = salvaged.with_suffix(".done")
    done.write_text(json.dumps({"at": utc_now(), "results": n, "pid": os.getpid()}))


def _count(path: Path) -> int:
    conn = sqlite3.connect(sqlite_uri(path, "ro"), uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])
    finally:
        conn.close()


def merge_salvage(salvaged: Path, path: Path) -> int:
    """Migrate the file at ``path`` and copy into it what the salvage has and it lacks; new results."""
    db = open_db(path)
    conn = db.conn
    try:
        conn.execute("ATTACH DATABASE ? AS old", (str(salvaged),))
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
