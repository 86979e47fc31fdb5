"""The cross-device latency matrix: devices x variants, with a recommendation per device.

Every query is parameterised (filters are values, never SQL). Percentiles are those of the pooled
samples of every matching run (see :mod:`collector.reports.stats`), read from the report index
(:mod:`collector.store.report_index`) and its not-yet-indexed tail (:mod:`collector.reports.source`),
so a report over a million results stays fast and needs no write.

One row per (device, model, variant). When a variant ran with several configurations (thread counts,
runtimes), the row shows the fastest configuration (its threads are in the row); ``threads=`` / ``batch=``
filters pin one. Batch defaults to 1 so rows compare like with like.

The parts: :mod:`~collector.reports.query` (filters, devices, cells), :mod:`~collector.reports.matrix`
(the row and report types), :mod:`~collector.reports.recommend` (baseline, speedups, what to ship).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from collector.reports.matrix import MatrixRow, Report
from collector.reports.query import (
    ReportFilter,
    artifact_deltas,
    describe,
    iso,
    parse_since,
    resolve_devices,
    select_cells,
)
from collector.reports.recommend import decorate
from collector.reports.source import ReportSource, read_snapshot, require_results
from collector.reports.stats import pooled_stats
from collector.store.report_index import ReportError, refresh_index

__all__ = [
    "MatrixRow",
    "Report",
    "ReportError",
    "ReportFilter",
    "latency_report",
    "parse_since",
    "resolve_devices",
]


def latency_report(
    conn: sqlite3.Connection,
    filters: ReportFilter = ReportFilter(),
    *,
    max_accuracy_drop: float | None = None,
    manifest: Path | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    refresh: bool = True,
    source: ReportSource | None = None,
) -> Report:
    """Build the matrix. Raises :class:`ReportError` for an empty database or filters matching nothing.

    ``refresh`` first brings the stored index up to date (a write); without it, or with a ``source``
    already read (``source.conn`` is ``conn``), the results not indexed yet are indexed in memory: the
    same figures, nothing written.
    """
    if max_accuracy_drop is not None and (math.isnan(max_accuracy_drop) or max_accuracy_drop < 0):
        raise ReportError("--max-accuracy-drop must be a number of points >= 0")
    if refresh and source is None:
        refresh_index(conn)
    with read_snapshot(conn):
        total = require_results(conn)
        source = source or ReportSource.read(conn)
        cells = select_cells(source, filters)
        if not cells:
            raise ReportError(f"no results match the filters ({describe(filters)})")
        by_id = {c[0]: c for c in cells}
        all_cells = len(cells) == len(source.cells())
        aggregates, hists = source.gather(None if all_cells else list(by_id), filters.since, filters.until)
        if not aggregates:
            raise ReportError(f"no successful results match the filters ({describe(filters)})")
        deltas = artifact_deltas(conn, manifest)
    best: dict[tuple[str, str, str], MatrixRow] = {}
    best_hist: dict[tuple[str, str, str], np.ndarray] = {}
    for i, aggregate in enumerate(aggregates):
        row = _row(by_id[aggregate[0]], aggregate, hists[i], deltas)
        if row is None:
            continue
        key = (row.device_id, row.model, row.variant)
        if key not in best or row.p50_ms < best[key].p50_ms:
            best[key] = row
            best_hist[key] = hists[i]
    notes: list[str] = []
    rows = decorate(
        sorted(best.values(), key=lambda r: (r.device_id, r.model, r.p50_ms)),
        filters,
        max_accuracy_drop,
        notes,
    )
    return Report(
        rows=tuple(rows),
        filters=filters,
        max_accuracy_drop=max_accuracy_drop,
        generated_at=iso(now()),
        results_total=total,
        notes=tuple(notes),
        hists=best_hist,
    )


def _row(
    c: tuple[Any, ...], aggregate: tuple[Any, ...], hist: np.ndarray, deltas: dict[str, float]
) -> MatrixRow | None:
    """One cell's matrix row from its aggregate and pooled histogram (None: no sample to pool)."""
    cid, runs, n, peak, energy, method, acc, ci_lo, ci_hi = aggregate
    pooled = pooled_stats(hist)
    if pooled is None:
        return None
    if runs == 1 and ci_lo is not None and ci_hi is not None:  # the agent's own CI of a single run
        ci_lo, ci_hi = float(ci_lo), float(ci_hi)
    else:
        ci_lo, ci_hi = pooled.p50_ci_low_ms, pooled.p50_ci_high_ms
    return MatrixRow(
        device_id=c[1],
        model=c[2] or "",
        variant=c[3] or c[4] or c[5][:12],
        artifact_name=c[4] or "",
        artifact_sha256=c[5] or "",
        format=c[6] or "",
        precision=c[7] or "",
        runtime=c[9] or "",
        threads=c[10],
        batch=c[11],
        runs=int(runs),
        n=int(n or pooled.n),
        p50_ms=pooled.p50_ms,
        p50_ci_low_ms=ci_lo,
        p50_ci_high_ms=ci_hi,
        p90_ms=pooled.p90_ms,
        size_bytes=c[8],
        peak_mb=peak,
        energy_j=energy,
        energy_method=method,
        accuracy_delta=acc if acc is not None else deltas.get(c[5] or ""),
        cell_ids=(cid,),
    )
