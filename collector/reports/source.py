"""Where reports read from: a read-only connection, one read snapshot, and the report index together
with its not-yet-indexed tail (so a report never writes, yet shows what it would after a refresh).

SQLite's rules for read-only WAL access (https://www.sqlite.org/wal.html#readonly, 3.22+): a
``mode=ro`` connection to a WAL database needs its ``-shm`` and ``-wal`` files to exist or to be
creatable; it then reads through the shared memory like any reader (a running collector's commits are
seen, nothing is written to the database file). When neither file exists and the directory is not
writable, no process has the database open (a WAL connection keeps its ``-wal`` while open) and none
can write it without creating them, so the file is opened ``immutable=1`` (no locks, no side files).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from collector.store.histograms import merge_by_group
from collector.store.migrations import MIGRATIONS
from collector.store.report_index import CELL_COLUMNS, IndexTail, ReportError, read_tail

_WAL_HEADER = b"\x02\x02"  # bytes 18-19 of the database header: file format versions 2 = WAL
MIGRATE_HINT = "run `edgebench collector serve` once to migrate it"


def connect_readonly(path: str | Path, *, timeout_s: float = 10.0) -> sqlite3.Connection:
    """A connection that cannot write ``path`` (``mode=ro``, ``query_only``); see the module docstring for
    the WAL case. The caller has checked that ``path`` is an SQLite file."""
    p = Path(path).absolute()
    with p.open("rb") as fh:
        wal = fh.read(20)[18:20] == _WAL_HEADER
    uri = f"file:{quote(str(p))}?mode=ro"
    side_files = any(Path(f"{p}{suffix}").exists() for suffix in ("-wal", "-shm"))
    if wal and not side_files and not os.access(p.parent, os.W_OK):
        uri += "&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=timeout_s, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        conn.execute("PRAGMA query_only = ON")
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        hint = " (its -wal/-shm files are missing or unreadable, the directory read-only)" if wal else ""
        raise ReportError(f"cannot read {path} read-only: {exc}{hint}") from None
    return conn


def check_schema(conn: sqlite3.Connection) -> int:
    """The database's schema version; :class:`ReportError` for a foreign database or one newer than this
    build. Older versions are read as they are (nothing is migrated)."""
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    missing = {"results", "devices", "artifacts"} - names
    if missing:
        raise ReportError(
            f"not a collector database (no {', '.join(sorted(missing))} table): "
            "give the collector's --db, or run `edgebench collector serve` to create one"
        )
    if "schema_migrations" not in names:
        return 0
    version = int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0])
    known = max(m.version for m in MIGRATIONS)
    if version > known:
        raise ReportError(
            f"the database is at schema version {version}, newer than this build ({known}): upgrade edgebench"
        )
    return version


@contextmanager
def read_snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction around a report, so the index and its tail (and every later query) see the
    same committed state while a collector keeps writing. Inside a transaction already: that one."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
    return any(r[1] == column for r in conn.execute(f"PRAGMA table_info([{table}])"))


@dataclass(frozen=True)
class Window:
    """One part of a time window: whole days from the daily rollup (``day >= lo``, ``day < hi``) or the
    per-run rows of a partial day (``finished_at >= lo``, ``<`` or ``<=`` ``hi``)."""

    daily: bool
    lo: str | None
    hi: str | None
    hi_inclusive: bool = False

    def holds(self, finished_at: str) -> bool:
        value = finished_at[:10] if self.daily else finished_at
        if self.lo is not None and value < self.lo:
            return False
        if self.hi is None:
            return True
        return value <= self.hi if self.hi_inclusive else value < self.hi


def windows(since: str | None, until: str | None) -> list[Window]:
    """The parts of [since, until]: whole days from the rollup, the partial days at the ends per run."""
    since_day = since[:10] if since else None
    full_from = since_day
    if since and since_day and since[10:] not in ("", "T00:00:00.000Z", "T00:00:00Z"):
        full_from = (date.fromisoformat(since_day) + timedelta(days=1)).isoformat()
    until_day = until[:10] if until else None
    if since and until and since_day == until_day:
        return [Window(False, since, until, True)]
    out = [Window(True, full_from, until_day)]
    if since and full_from != since_day:
        out.append(Window(False, since, full_from))
    if until:
        out.append(Window(False, until_day, until, True))
    return out


_DAILY = (
    "SELECT cell_id, runs, n, peak_mb, energy_jn, energy_n, energy_method, acc_sum, acc_count, ci_low_ms, "
    "ci_high_ms, hist FROM report_daily"
)
_RUNS = (
    "SELECT cell_id, 1, n, peak_mb, COALESCE(energy_j * n, 0), "
    "CASE WHEN energy_j IS NOT NULL THEN n ELSE 0 END, energy_method, COALESCE(accuracy_delta, 0), "
    "accuracy_delta IS NOT NULL, p50_ci_low_ms, p50_ci_high_ms, hist "
    "FROM report_runs WHERE status = 'ok' AND hist IS NOT NULL"
)
Aggregate = tuple[Any, ...]  # cell_id, runs, n, peak_mb, energy_j, energy_method, acc, ci_low, ci_high


def _as_run_row(run: tuple[Any, ...]) -> tuple[Any, ...]:
    """A tail run (RUN_COLUMNS) in the shape of a :data:`_RUNS` row."""
    cid, n, peak, energy, method, acc = run[0], run[5], run[9], run[10], run[11], run[12]
    energy_jn = energy * n if energy is not None and n is not None else 0
    energy_n = n if energy is not None else 0
    return (cid, 1, n, peak, energy_jn, energy_n, method, acc or 0, int(acc is not None), run[7], run[8],
            run[14])  # fmt: skip


@dataclass(frozen=True)
class ReportSource:
    """The report index as a refresh would leave it: stored rows (when usable) plus the tail."""

    conn: sqlite3.Connection
    tail: IndexTail

    @classmethod
    def read(cls, conn: sqlite3.Connection) -> ReportSource:
        return cls(conn, read_tail(conn))

    def cells(self) -> list[tuple[Any, ...]]:
        stored = []
        if self.tail.indexed:
            stored = self.conn.execute(f"SELECT cell_id, {CELL_COLUMNS} FROM report_cells").fetchall()
        return [*map(tuple, stored), *self.tail.cells]

    def _rows(self, cell_ids: list[int] | None, parts: list[Window]) -> Iterator[tuple[Any, ...]]:
        cells_sql = f"cell_id IN ({', '.join('?' * len(cell_ids))})" if cell_ids is not None else "1 = 1"
        params: list[Any] = list(cell_ids or [])
        wanted = set(cell_ids) if cell_ids is not None else None
        for w in parts:
            if self.tail.indexed:
                column = "day" if w.daily else "finished_at"
                where = [cells_sql]
                where += [f"{column} >= ?"] if w.lo is not None else []
                where += [f"{column} {'<=' if w.hi_inclusive else '<'} ?"] if w.hi is not None else []
                bounds = [b for b in (w.lo, w.hi) if b is not None]
                head = f"{_DAILY} WHERE " if w.daily else f"{_RUNS} AND "
                yield from self.conn.execute(head + " AND ".join(where), [*params, *bounds])
            for run in self.tail.runs:  # as refresh_index would store them: daily only with a histogram
                ok = run[3] == "ok" and (bool(run[14]) if w.daily else run[14] is not None)
                if ok and (wanted is None or run[0] in wanted) and w.holds(run[1]):
                    yield _as_run_row(run)

    def gather(
        self, cell_ids: list[int] | None, since: str | None, until: str | None
    ) -> tuple[list[Aggregate], np.ndarray]:
        """Per-cell aggregates of the ok runs in [since, until] and their pooled histograms (row i of the
        matrix belongs to aggregate i)."""
        acc: dict[int, list[Any]] = {}
        owners: list[int] = []
        blobs: list[bytes] = []
        for cid, runs, n, peak, ejn, en, method, asum, acount, lo, hi, hist in self._rows(
            cell_ids, windows(since, until)
        ):
            a = acc.get(cid)
            if a is None:
                a = acc[cid] = [len(acc), 0, 0, None, 0.0, 0, None, 0.0, 0, None, None]
            a[1] += runs
            a[2] += n or 0
            a[3] = peak if a[3] is None else a[3] if peak is None else max(a[3], peak)
            a[4] += ejn or 0.0
            a[5] += en or 0
            a[6] = method or a[6]
            a[7] += asum or 0.0
            a[8] += acount or 0
            a[9] = lo if a[9] is None else a[9] if lo is None else min(a[9], lo)
            a[10] = hi if a[10] is None else a[10] if hi is None else max(a[10], hi)
            owners.append(a[0])
            blobs.append(hist)
        hists = merge_by_group(blobs, np.asarray(owners, dtype=np.int64), len(acc))
        aggregates = [
            (cid, a[1], a[2], a[3], a[4] / a[5] if a[5] else None, a[6], a[7] / a[8] if a[8] else None,
             a[9], a[10])
            for cid, a in acc.items()
        ]  # fmt: skip
        return aggregates, hists

    def latest_ok_result(self, cell_id: int) -> str | None:
        """The result id of the latest ok run of a cell."""
        found = None
        if self.tail.indexed:
            found = self.conn.execute(
                "SELECT finished_at, result_id FROM report_runs WHERE cell_id = ? AND status = 'ok' "
                "ORDER BY finished_at DESC, result_id DESC LIMIT 1",
                (cell_id,),
            ).fetchone()
        tail = [(r[1], r[2]) for r in self.tail.runs if r[0] == cell_id and r[3] == "ok"]
        best = max([*([tuple(found)] if found else []), *tail], default=None)
        return best[1] if best else None


def require_results(conn: sqlite3.Connection) -> int:
    total = int(conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])
    if total == 0:
        raise ReportError(
            "the database has no results yet: run `edgebench fleet push ...` and let devices report"
        )
    return total
