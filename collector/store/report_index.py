"""The report index: one narrow row per result with its latency histogram (migration 2).

``results`` rows carry the full JSON record and are several KB each, so scanning a million of them
for a report would read gigabytes. :func:`refresh_index` brings ``report_cells`` / ``report_runs`` up
to date with ``results`` incrementally (by rowid high-water mark, reconciled by count), parsing each
record's raw samples once into a sparse histogram (:mod:`collector.store.histograms`). The ingest writer
calls it while the stream is idle so that reports never pay for a backlog; a report that must not write
(a read-only connection) reads the index plus :func:`read_tail`, the same rows computed in memory.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from collector.store.histograms import encode_hist, merge_blobs, synthetic_samples
from wire.errors import EdgebenchError


class ReportError(EdgebenchError):
    """A report that cannot be made (bad filter, empty database, unreadable data): one-line reason."""


_SELECT = """SELECT rowid, result_id, device_id, model, variant, artifact_name, artifact_sha256, format,
  precision, size_bytes, runtime, threads, batch, status, job_id, finished_at, n, min_ms, p50_ms,
  p50_ci_low_ms, p50_ci_high_ms, p90_ms, p99_ms, max_ms, load_peak_mb, inference_peak_mb,
  energy_j_per_inference, energy_method, accuracy_delta,
  json_extract(record, '$.latency.samples_ms')
FROM results"""


_INSERT_RUN = """INSERT OR IGNORE INTO report_runs (cell_id, finished_at, result_id, status, job_id, n,
  p50_ms,  p50_ci_low_ms, p50_ci_high_ms, peak_mb, energy_j, energy_method, accuracy_delta, raw, hist)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""


def _meta(conn: sqlite3.Connection, key: str, default: int = 0) -> int:
    row = conn.execute("SELECT value FROM report_meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else default


def _set_meta(conn: sqlite3.Connection, key: str, value: int) -> None:
    conn.execute(
        "INSERT INTO report_meta (key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def run_hist(row: tuple[Any, ...]) -> tuple[int, bytes | None]:
    """(raw?, histogram blob) of one selected results row."""
    (status, n, min_ms, p50, p90, p99, max_ms, samples_json) = (
        row[13],
        row[16],
        row[17],
        row[18],
        row[21],
        row[22],
        row[23],
        row[29],
    )
    if status != "ok" or p50 is None:
        return 0, None
    if samples_json:
        samples = np.asarray(json.loads(samples_json), dtype=np.float64)
        if samples.size:
            return 1, encode_hist(samples, weight_to=n)
    synth = synthetic_samples(
        int(n or 1),
        min_ms if min_ms is not None else p50,
        p50,
        p90,
        p99,
        max_ms if max_ms is not None else p50,
    )
    return 0, encode_hist(synth, weight_to=n)


CELL_COLUMNS = (
    "device_id, model, variant, artifact_name, artifact_sha256, format, precision, size_bytes, runtime, "
    "threads, batch"
)
RUN_COLUMNS = (
    "cell_id, finished_at, result_id, status, job_id, n, p50_ms, p50_ci_low_ms, p50_ci_high_ms, peak_mb, "
    "energy_j, energy_method, accuracy_delta, raw, hist"
)


def cell_key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """The UNIQUE key of ``report_cells`` (device, artifact, runtime, threads, batch) of a selected row."""
    return (row[2], row[6], row[10], row[11], row[12])


def cell_values(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """The ``report_cells`` row (:data:`CELL_COLUMNS`) of one selected results row."""
    return (row[2], row[3] or "", row[4] or "", row[5], row[6], row[7], row[8], row[9], row[10], row[11],
            row[12])  # fmt: skip


def run_values(cell_id: int, row: tuple[Any, ...]) -> tuple[Any, ...]:
    """The ``report_runs`` row (:data:`RUN_COLUMNS`) of one selected results row in cell ``cell_id``."""
    raw, hist = run_hist(row)
    peaks = [v for v in (row[24], row[25]) if v is not None]
    return (cell_id, row[15], row[1], row[13], row[14], row[16], row[18], row[19], row[20],
            max(peaks) if peaks else None, row[26], row[27], row[28], raw, hist)  # fmt: skip


class _Indexer:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.pending: list[tuple[Any, ...]] = []
        self.cells: dict[tuple[Any, ...], int] = {
            tuple(r[1:]): r[0]
            for r in conn.execute(
                "SELECT cell_id, device_id, artifact_sha256, runtime, threads, batch FROM report_cells"
            )
        }

    def cell(self, row: tuple[Any, ...]) -> int:
        key = cell_key(row)
        cid = self.cells.get(key)
        if cid is None:
            # another process (a collector worker, a report with refresh) may have added it since this
            # indexer read the cells: keep theirs
            self.conn.execute(
                f"INSERT OR IGNORE INTO report_cells ({CELL_COLUMNS}) VALUES ({', '.join('?' * 11)})",
                cell_values(row),
            )
            cid = int(
                self.conn.execute(
                    "SELECT cell_id FROM report_cells WHERE device_id = ? AND artifact_sha256 = ? "
                    "AND runtime = ? AND threads = ? AND batch = ?",
                    key,
                ).fetchone()[0]
            )
            self.cells[key] = cid
        return cid

    def add(self, rows: list[tuple[Any, ...]]) -> int:
        out = [run_values(self.cell(row), row) for row in rows]
        new = 0
        for run in out:  # one by one: only rows really inserted go into the daily rollup
            cur = self.conn.execute(_INSERT_RUN, run)
            if cur.rowcount == 1:
                new += 1
                if run[3] == "ok" and run[14]:
                    self.pending.append(run)
        return new

    def flush_daily(self) -> None:
        """Fold the newly inserted ok runs into ``report_daily`` (one upsert per cell and day)."""
        groups: dict[tuple[int, str], list[tuple[Any, ...]]] = {}
        for run in self.pending:
            groups.setdefault((run[0], run[1][:10]), []).append(run)
        self.pending = []
        for (cell_id, day), runs in groups.items():
            old = self.conn.execute(
                "SELECT runs, n, peak_mb, energy_jn, energy_n, energy_method, acc_sum, acc_count, ci_low_ms, "
                "ci_high_ms, hist FROM report_daily WHERE cell_id = ? AND day = ?",
                (cell_id, day),
            ).fetchone()
            agg = list(old) if old else [0, 0, None, 0.0, 0, None, 0.0, 0, None, None, b""]
            blobs = [agg[10]]
            for r in runs:
                n = r[5] or 0
                agg[0] += 1
                agg[1] += n
                agg[2] = _max(agg[2], r[9])
                if r[10] is not None:
                    agg[3] += r[10] * n
                    agg[4] += n
                    agg[5] = r[11] or agg[5]
                if r[12] is not None:
                    agg[6] += r[12]
                    agg[7] += 1
                agg[8] = _min(agg[8], r[7])
                agg[9] = _max(agg[9], r[8])
                blobs.append(r[14])
            agg[10] = merge_blobs(blobs)
            self.conn.execute(
                "INSERT OR REPLACE INTO report_daily (cell_id, day, runs, n, peak_mb, energy_jn, energy_n, "
                "energy_method, acc_sum, acc_count, ci_low_ms, ci_high_ms, hist) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (cell_id, day, *agg),
            )


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def refresh_index(
    conn: sqlite3.Connection, *, batch: int = 5000, progress: Callable[[int], None] | None = None
) -> int:
    """Index every result not indexed yet; return how many rows were added.

    Raises :class:`ReportError` when the database lacks the index tables (not migrated) or is read-only
    with a backlog to index.
    """
    try:
        conn.execute("SELECT 1 FROM report_runs LIMIT 1")
        _ensure_tables(conn)
    except sqlite3.OperationalError:
        raise ReportError(
            "the database has no report index: open it once with the collector to migrate it"
        ) from None
    total = int(conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])
    if total == _meta(conn, "indexed"):
        return 0
    added = 0
    try:
        indexer = _Indexer(conn)
        while True:
            # the high-water mark is read under the write lock: two refreshers (collector workers, a
            # report with refresh) never index the same rows twice
            with conn:
                if not conn.in_transaction:
                    conn.execute("BEGIN IMMEDIATE")
                hwm = _meta(conn, "results_rowid")
                rows = conn.execute(
                    f"{_SELECT} WHERE rowid > ? ORDER BY rowid LIMIT ?", (hwm, batch)
                ).fetchall()
                if not rows:
                    break
                new = indexer.add(rows)
                indexer.flush_daily()
                added += new
                hwm = int(rows[-1][0])
                _set_meta(conn, "results_rowid", hwm)
                _set_meta(conn, "indexed", _meta(conn, "indexed") + new)
            if progress:
                progress(added)
        if _meta(conn, "indexed") != total:  # rows deleted, or rowids renumbered by VACUUM: reconcile
            added += _reconcile(conn, indexer)
    except sqlite3.OperationalError as exc:
        if "readonly" in str(exc) or "read-only" in str(exc):
            raise ReportError(
                f"the report index needs updating but the database is read-only ({exc})"
            ) from None
        raise
    return added


def _ensure_tables(conn: sqlite3.Connection) -> None:
    """Tables added to migration 2 after it first shipped (CREATE ... IF NOT EXISTS: a no-op when present)."""
    from collector.store.migrations import MIGRATIONS

    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'report_daily'").fetchone():
        return
    with conn:
        for statement in next(m for m in MIGRATIONS if m.version == 2).statements:
            conn.execute(statement)
        conn.execute("DELETE FROM report_runs")  # rebuild everything, rollup included
        conn.execute("DELETE FROM report_meta")


def _count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM report_runs").fetchone()[0])


def _reconcile(conn: sqlite3.Connection, indexer: _Indexer) -> int:
    have = {r[0] for r in conn.execute("SELECT result_id FROM report_runs")}
    want = {r[0] for r in conn.execute("SELECT result_id FROM results")}
    added = 0
    with conn:
        gone = list(have - want)
        for i in range(0, len(gone), 500):
            part = gone[i : i + 500]
            conn.execute(f"DELETE FROM report_runs WHERE result_id IN ({','.join('?' * len(part))})", part)
        conn.execute("DELETE FROM report_daily")
        indexer.pending = [
            tuple(r)
            for r in conn.execute(
                "SELECT cell_id, finished_at, result_id, status, job_id, n, p50_ms, p50_ci_low_ms, "
                "p50_ci_high_ms, peak_mb, energy_j, energy_method, accuracy_delta, raw, hist "
                "FROM report_runs "
                "WHERE status = 'ok' AND hist IS NOT NULL"
            )
        ]
        missing = list(want - have)
        for i in range(0, len(missing), 500):
            part = missing[i : i + 500]
            rows = conn.execute(
                f"{_SELECT} WHERE result_id IN ({','.join('?' * len(part))})", part
            ).fetchall()
            added += indexer.add(rows)
        indexer.flush_daily()
        _set_meta(conn, "indexed", _count(conn))
        _set_meta(
            conn,
            "results_rowid",
            int(conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM results").fetchone()[0]),
        )
    return added


INDEX_TABLES = frozenset({"report_cells", "report_runs", "report_meta", "report_daily"})


@dataclass(frozen=True)
class IndexTail:
    """What :func:`refresh_index` would add, computed in memory: nothing is written.

    ``indexed`` is False when the stored index cannot be used as it is (its tables are missing: a
    database from before migration 2, or from an early migration 2 without the daily rollup; or results
    were deleted or renumbered since it was built, which only a refresh reconciles). Then every result
    is in the tail and the stored index is to be ignored: slower, same figures.
    """

    indexed: bool
    cells: tuple[tuple[Any, ...], ...]  # (cell_id, *CELL_COLUMNS) of the cells not in report_cells
    runs: tuple[tuple[Any, ...], ...]  # RUN_COLUMNS rows of the results not indexed yet


def index_usable(conn: sqlite3.Connection) -> bool:
    """Whether the database has every report index table (read only: nothing is created)."""
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return names >= INDEX_TABLES


def read_tail(conn: sqlite3.Connection, *, batch: int = 5000) -> IndexTail:
    """The results not indexed yet as index rows, without writing (works on a ``mode=ro`` connection).

    Mirrors :func:`refresh_index`: nothing when the index counts every result; else the rows past the
    rowid high-water mark; and when the counts still disagree, every result (the index is ignored).
    Call it inside the read transaction the report reads the index in, so both see one snapshot.
    """
    total = int(conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])
    indexed = index_usable(conn)
    if indexed and total == _meta(conn, "indexed"):
        return IndexTail(True, (), ())
    if indexed:
        hwm = _meta(conn, "results_rowid")
        behind = int(conn.execute("SELECT COUNT(*) FROM results WHERE rowid > ?", (hwm,)).fetchone()[0])
        indexed = _meta(conn, "indexed") + behind == total
    if not indexed:
        hwm = 0
    cells: dict[tuple[Any, ...], int] = {}
    next_id = 1
    if indexed:
        for cid, *key in conn.execute(
            "SELECT cell_id, device_id, artifact_sha256, runtime, threads, batch FROM report_cells"
        ):
            cells[tuple(key)] = cid
            next_id = max(next_id, cid + 1)
    new_cells: list[tuple[Any, ...]] = []
    runs: list[tuple[Any, ...]] = []
    while True:
        rows = conn.execute(f"{_SELECT} WHERE rowid > ? ORDER BY rowid LIMIT ?", (hwm, batch)).fetchall()
        if not rows:
            break
        for row in rows:
            key = cell_key(row)
            cid = cells.get(key)
            if cid is None:
                cid = cells[key] = next_id
                next_id += 1
                new_cells.append((cid, *cell_values(row)))
            runs.append(run_values(cid, row))
        hwm = int(rows[-1][0])
    return IndexTail(indexed, tuple(new_cells), tuple(runs))
