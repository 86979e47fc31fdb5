"""Compare two sets of runs (before / after): per device and variant, is the candidate slower or faster?

A side is a *selector* (all parameterised, never SQL):

* ``job:ID[,ID...]``      the results of one or more jobs
* ``ids:ID,ID,...``       these result ids; ``ids:@FILE`` reads them from a file (one per line)
* ``FROM..TO``            results finished in a time range; either end may be empty, and each end is a
                          date, a date-time or a relative age
                          (``2024-05-01..2024-05-08``, ``14d..7d``, ``1d..``)
* ``ID``                  a bare id: a job id when results carry it, else a result id

Runs are matched on (device, model, variant, runtime, threads, batch). A difference is flagged as a
regression or an improvement only when the 95 % bootstrap confidence interval of the difference of
medians (from raw samples; two-level over runs and samples when a side has several runs) excludes zero
*and* the change is at least ``min_effect`` (default 1 %), and only with at least two runs on each
side: a single run carries no run-to-run variation, so its verdict is "inconclusive". Runs stored
without raw samples are approximated from their recorded quantiles (the method column says so).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from collector.reports.query import ReportFilter, parse_since, select_cells
from collector.reports.source import ReportSource, read_snapshot
from collector.reports.stats import bootstrap_median_diff
from collector.store.histograms import synthetic_samples
from collector.store.report_index import ReportError

MAX_RUNS_PER_SIDE = 200
MIN_RUNS_PER_SIDE = 2  # below this a side carries no run-to-run variation: never flag
Key = tuple[str, str, str, str, int, int]


@dataclass(frozen=True)
class CompareRow:
    device_id: str
    model: str
    variant: str
    runtime: str
    threads: int
    batch: int
    baseline_runs: int
    candidate_runs: int
    baseline_p50_ms: float | None
    candidate_p50_ms: float | None
    diff_ms: float | None
    ci_low_ms: float | None
    ci_high_ms: float | None
    change: float | None  # relative, candidate vs baseline (+0.10 = 10 % slower)
    verdict: str  # "regression" | "improvement" | "no significant change" | "only in baseline" | ...
    method: str


@dataclass(frozen=True)
class Comparison:
    baseline: str
    candidate: str
    rows: tuple[CompareRow, ...]
    min_effect: float
    notes: tuple[str, ...] = ()

    @property
    def regressions(self) -> tuple[CompareRow, ...]:
        return tuple(r for r in self.rows if r.verdict == "regression")


def _selector_sql(conn: sqlite3.Connection, text: str, now: Callable[[], datetime]) -> tuple[str, list[Any]]:
    sel = text.strip()
    if not sel:
        raise ReportError("an empty selector: use job:ID, ids:ID,ID, FROM..TO or a bare id")
    if sel.startswith("job:"):
        ids = [s.strip() for s in sel[4:].split(",") if s.strip()]
        if not ids:
            raise ReportError(f"no job id in {text!r}")
        return f"job_id IN ({', '.join('?' * len(ids))})", ids
    if sel.startswith("ids:"):
        body = sel[4:]
        if body.startswith("@"):
            try:
                body = Path(body[1:]).read_text()
            except OSError as exc:
                raise ReportError(f"cannot read result ids from {body[1:]}: {exc.strerror}") from None
        ids = [s.strip() for s in body.replace("\n", ",").split(",") if s.strip()]
        if not ids:
            raise ReportError(f"no result id in {text!r}")
        return f"result_id IN ({', '.join('?' * len(ids))})", ids
    if ".." in sel:
        lo, _, hi = sel.partition("..")
        where, params = [], []
        if lo.strip():
            where.append("finished_at >= ?")
            params.append(parse_since(lo, now))
        if hi.strip():
            where.append("finished_at <= ?")
            params.append(parse_since(hi, now))
        return (" AND ".join(where) or "1 = 1"), params
    if conn.execute("SELECT 1 FROM results WHERE job_id = ? LIMIT 1", (sel,)).fetchone():
        return "job_id = ?", [sel]
    if conn.execute("SELECT 1 FROM results WHERE result_id = ? LIMIT 1", (sel,)).fetchone():
        return "result_id = ?", [sel]
    raise ReportError(
        f"{text!r} is neither a job id nor a result id in the database (see --help for selectors)"
    )


def _load(
    conn: sqlite3.Connection,
    text: str,
    f: ReportFilter,
    devices: list[str] | None,
    now: Callable[[], datetime],
) -> dict[Key, list[tuple[np.ndarray, bool]]]:
    """The runs of one side by key; ``devices``: the devices a model/device/tag filter selects."""
    where, params = _selector_sql(conn, text, now)
    extra, extra_params = [], []
    if devices is not None:
        if not devices:
            return {}
        extra.append(f"device_id IN ({', '.join('?' * len(devices))})")
        extra_params.extend(devices)
        if f.model:
            extra.append("model = ?")
            extra_params.append(f.model)
    sql = (
        "SELECT device_id, model, COALESCE(NULLIF(variant, ''), artifact_name), runtime, threads, batch, n, "
        "min_ms, "
        "p50_ms, p90_ms, p99_ms, max_ms, json_extract(record, '$.latency.samples_ms') FROM results "
        f"WHERE status = 'ok' AND ({where}) {''.join(' AND ' + e for e in extra)} ORDER BY finished_at DESC"
    )
    out: dict[Key, list[tuple[np.ndarray, bool]]] = {}
    for row in conn.execute(sql, [*params, *extra_params]):
        key: Key = (row[0], row[1] or "", row[2] or "", row[3] or "", int(row[4] or 0), int(row[5] or 1))
        runs = out.setdefault(key, [])
        if len(runs) >= MAX_RUNS_PER_SIDE:
            continue
        n, mn, p50, p90, p99, mx, raw = row[6:13]
        samples = np.asarray(json.loads(raw), dtype=np.float64) if raw else np.empty(0)
        if samples.size:
            runs.append((samples, True))
        elif p50 is not None:
            runs.append((synthetic_samples(int(n or 1), mn or p50, p50, p90, p99, mx or p50), False))
    if not out:
        raise ReportError(f"no successful results match {text!r}")
    return out


def compare_runs(
    conn: sqlite3.Connection,
    baseline: str,
    candidate: str,
    *,
    filters: ReportFilter = ReportFilter(batch=None),
    min_effect: float = 0.01,
    iterations: int = 1000,
    seed: int = 0,
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
) -> Comparison:
    """Per device and variant, baseline vs candidate (see the module docstring). Reads only: the cells a
    model/device/tag filter selects come from the report index and its tail, nothing is refreshed."""
    with read_snapshot(conn):
        if int(conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]) == 0:
            raise ReportError("the database has no results yet")
        if min_effect < 0:
            raise ReportError("--min-effect must be >= 0")
        devices = None
        if filters.model or filters.devices or filters.tag:
            devices = sorted({c[1] for c in select_cells(ReportSource.read(conn), filters)})
        base = _load(conn, baseline, filters, devices, now)
        cand = _load(conn, candidate, filters, devices, now)
    rows = [
        _compare_key(key, base.get(key), cand.get(key), min_effect, iterations, seed)
        for key in sorted(set(base) | set(cand))
    ]
    notes = []
    if any(r.verdict.startswith("inconclusive") for r in rows):
        notes.append(
            f"a change is only flagged with at least {MIN_RUNS_PER_SIDE} runs on each side "
            "(e.g. job:A,B vs job:C,D): one run shows no run-to-run variation"
        )
    if any(len(v) >= MAX_RUNS_PER_SIDE for side in (base, cand) for v in side.values()):
        notes.append(f"at most the {MAX_RUNS_PER_SIDE} latest runs per device and variant are compared")
    return Comparison(baseline, candidate, tuple(rows), min_effect, tuple(notes))


def _compare_key(
    key: Key,
    b: list[tuple[np.ndarray, bool]] | None,
    c: list[tuple[np.ndarray, bool]] | None,
    min_effect: float,
    iterations: int,
    seed: int,
) -> CompareRow:
    """One device x variant x config: the runs of each side, compared."""
    if not b or not c:
        only = "only in baseline" if b else "only in candidate"
        runs = b or c or []
        med = float(np.median(np.concatenate([s for s, _ in runs]))) if runs else None
        return CompareRow(
            *key,
            len(b or []),
            len(c or []),
            med if b else None,
            med if c else None,
            None,
            None,
            None,
            None,
            only,
            "",
        )
    d = bootstrap_median_diff([s for s, _ in b], [s for s, _ in c], iterations=iterations, seed=seed)
    significant = d.significant and abs(d.rel) >= min_effect
    if min(len(b), len(c)) < MIN_RUNS_PER_SIDE:
        # One run per side: the bootstrap sees only the noise inside that run, not the run-to-run
        # variation (another process start, another warm-up), so a "significant" change may be none.
        verdict = f"inconclusive (fewer than {MIN_RUNS_PER_SIDE} runs on a side)"
    elif significant:
        verdict = "regression" if d.diff_ms > 0 else "improvement"
    else:
        verdict = "no significant change"
    method = d.method if all(raw for _, raw in b + c) else d.method + ", some runs from recorded quantiles"
    return CompareRow(*key, len(b), len(c), d.baseline_ms, d.candidate_ms, d.diff_ms, d.ci_low_ms,
                      d.ci_high_ms, d.rel, verdict, method)  # fmt: skip
