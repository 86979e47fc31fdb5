"""Compare two sets of runs (before / after): per device and variant, is the candidate slower or faster?

A side is a *selector* (all parameterised, never SQL):

* ``job:ID[,ID...]``      the results of one or more jobs
* ``ids:ID,ID,...``       these result ids; ``ids:@FILE`` reads them from a file (one per line)
* ``FROM..TO``            results finished in a time range; either end may be empty, and each end is a
                          date, a date-time or a relative age
                          (``2024-05-01..2024-05-08``, ``14d..7d``, ``1d..``)
* ``ID``                  a bare id: a job id when results carry it, else a result id

Runs are matched on (device, model, variant, runtime, threads, batch). The unit of replication is the
*run*: each run counts as one number, its median (``p50_ms``, from every timed sample of that run), and
the sides are compared with Welch's t-test on ln(run median); the ratio candidate / baseline is
exp(mean ln candidate - mean ln baseline) and its CI is the Welch t interval. Resampling the samples
inside runs would ignore what moves whole runs (another process start, another warm-up, another board
temperature): with two runs a side, that flagged 28 % of rows on identical work.

The rule, per row (``alpha`` 0.05 unless given):

* run-to-run variation ``run_cv`` = exp(s) - 1, s the pooled SD of ln(run median) within the sides;
* threshold = max(``min_effect``, ``run_cv``): no change smaller than what runs vary by is flagged;
* **regression** / **improvement**: p < alpha and |ln ratio| >= ln(1 + threshold);
* **inconclusive (needs N runs a side)**: |ln ratio| >= ln(1 + threshold) but p >= alpha: the data
  cannot decide; N is the runs a side with which a t-test at alpha detects the change seen with 80 %
  power, given ``run_cv``;
* **no significant change**: the change seen is smaller than the threshold;
* **inconclusive (fewer than 2 runs on a side)**: one run has no run-to-run variation to test against.

Calibration (tests/test_compare_calibration.py, simulated runs with a run-level random effect and
within-run noise): at most 5 % of rows flagged on identical work at 2, 3, 5 and 10 runs a side; a 10 %
slowdown is flagged at 5 runs a side in >= 80 % of rows when runs vary by <= 3 %. The rate is per row:
over R rows of identical work, about alpha * R / 2 rows are expected to be flagged regressions.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from collector.reports.query import ReportFilter, expand_selector, parse_since, select_cells
from collector.reports.source import ReportSource, read_snapshot
from collector.reports.stats import MIN_RUNS, TOO_FEW_RUNS, RunTest, compare_run_medians
from collector.store.report_index import ReportError

MAX_RUNS_PER_SIDE = 200
MIN_RUNS_PER_SIDE = MIN_RUNS  # below this a side carries no run-to-run variation: never flag
DEFAULT_ALPHA = 0.05
DEFAULT_MIN_EFFECT = 0.01
METHOD = "Welch t-test on ln(run median)"
Key = tuple[str, str, str, str, int, int]


@dataclass(frozen=True)
class CompareRow:
    """One device x variant x config. ``*_p50_ms``: the geometric mean of the runs' medians of a side;
    ``diff_ms`` and its CI (``ci_*_ms``) are candidate - baseline in ms, ``change`` and its CI
    (``change_ci_*``) the same relative to the baseline (+0.10 = 10 % slower)."""

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
    change: float | None
    verdict: (
        str  # "regression" | "improvement" | "no significant change" | "inconclusive (...)" | "only in ..."
    )
    method: str
    change_ci_low: float | None = None
    change_ci_high: float | None = None
    p_value: float | None = None
    run_cv: float | None = None  # run-to-run variation of the run medians (relative)
    threshold: float | None = None  # the minimum effect applied: max(min_effect, run_cv)
    detectable_change: float | None = None  # what these runs detect with 80 % power
    runs_needed: int | None = None  # runs a side that would decide an inconclusive row


@dataclass(frozen=True)
class Comparison:
    baseline: str
    candidate: str
    rows: tuple[CompareRow, ...]
    min_effect: float
    notes: tuple[str, ...] = ()
    alpha: float = DEFAULT_ALPHA

    @property
    def regressions(self) -> tuple[CompareRow, ...]:
        return tuple(r for r in self.rows if r.verdict == "regression")


def _selector_sql(conn: sqlite3.Connection, text: str, now: Callable[[], datetime]) -> tuple[str, list[Any]]:
    sel = expand_selector(conn, text).strip()  # unique id prefixes -> full ids
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
) -> dict[Key, list[float]]:
    """The run medians (ms) of one side by key, newest first; ``devices``: those a model/device/tag
    filter selects. A run's median is its record's p50 (computed on the device from every timed sample)."""
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
        "SELECT device_id, model, COALESCE(NULLIF(variant, ''), artifact_name), runtime, threads, batch, "
        "p50_ms FROM results "
        f"WHERE status = 'ok' AND p50_ms > 0 AND ({where}) {''.join(' AND ' + e for e in extra)} "
        "ORDER BY finished_at DESC"
    )
    out: dict[Key, list[float]] = {}
    for row in conn.execute(sql, [*params, *extra_params]):
        key: Key = (row[0], row[1] or "", row[2] or "", row[3] or "", int(row[4] or 0), int(row[5] or 1))
        runs = out.setdefault(key, [])
        if len(runs) < MAX_RUNS_PER_SIDE and math.isfinite(row[6]):
            runs.append(float(row[6]))
    if not out:
        raise ReportError(f"no successful results match {text!r}")
    return out


def compare_runs(
    conn: sqlite3.Connection,
    baseline: str,
    candidate: str,
    *,
    filters: ReportFilter = ReportFilter(batch=None),
    min_effect: float = DEFAULT_MIN_EFFECT,
    alpha: float = DEFAULT_ALPHA,
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
) -> Comparison:
    """Per device and variant, baseline vs candidate (the rule: the module docstring). Reads only: the
    cells a model/device/tag filter selects come from the report index and its tail, nothing is
    refreshed."""
    if not (min_effect >= 0 and math.isfinite(min_effect)):
        raise ReportError("--min-effect must be >= 0")
    if not 0 < alpha < 1:
        raise ReportError("--alpha must be between 0 and 1")
    with read_snapshot(conn):
        if int(conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]) == 0:
            raise ReportError("the database has no results yet")
        devices = None
        if filters.model or filters.devices or filters.tag:
            devices = sorted({c[1] for c in select_cells(ReportSource.read(conn), filters)})
        base = _load(conn, baseline, filters, devices, now)
        cand = _load(conn, candidate, filters, devices, now)
    rows = tuple(
        _compare_key(key, base.get(key), cand.get(key), min_effect, alpha)
        for key in sorted(set(base) | set(cand))
    )
    return Comparison(
        baseline, candidate, rows, min_effect, _notes(rows, base, cand, min_effect, alpha), alpha
    )


def _notes(
    rows: tuple[CompareRow, ...],
    base: dict[Key, list[float]],
    cand: dict[Key, list[float]],
    min_effect: float,
    alpha: float,
) -> tuple[str, ...]:
    notes = [
        f"a row is flagged when {METHOD} (one value per run) gives p < {alpha:g} and |change| >= "
        f"max(--min-effect {min_effect:.0%}, the run-to-run variation of its runs)"
    ]
    if any(r.verdict == TOO_FEW_RUNS for r in rows):
        notes.append(
            f"a change is only flagged with at least {MIN_RUNS_PER_SIDE} runs on each side "
            "(e.g. job:A,B vs job:C,D): one run shows no run-to-run variation"
        )
    if any(r.runs_needed is not None for r in rows):
        notes.append(
            "'needs N runs a side': the change seen is at least the threshold but not significant; with "
            f"N runs a side a test at {alpha:g} would detect it 80% of the time, if it is real"
        )
    if any(len(v) >= MAX_RUNS_PER_SIDE for side in (base, cand) for v in side.values()):
        notes.append(f"at most the {MAX_RUNS_PER_SIDE} latest runs per device and variant are compared")
    return tuple(notes)


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _compare_key(
    key: Key, b: list[float] | None, c: list[float] | None, min_effect: float, alpha: float
) -> CompareRow:
    """One device x variant x config: the run medians of each side, compared."""
    if not b or not c:
        only = "only in baseline" if b else "only in candidate"
        med = _geomean(b or c or [])
        return CompareRow(*key, len(b or []), len(c or []), med if b else None, med if c else None,
                          None, None, None, None, only, "")  # fmt: skip
    t: RunTest = compare_run_medians(b, c, alpha=alpha, min_effect=min_effect)
    ms = t.baseline_ms

    def rel(ratio: float | None) -> float | None:
        return None if ratio is None else ratio - 1.0

    tested = t.p_value is not None
    return CompareRow(
        *key, t.baseline_runs, t.candidate_runs, ms, t.candidate_ms, t.candidate_ms - ms,
        ms * (t.ratio_ci_low - 1) if t.ratio_ci_low is not None else None,
        ms * (t.ratio_ci_high - 1) if t.ratio_ci_high is not None else None,
        t.ratio - 1.0, t.verdict, METHOD if tested else "no test: one run on a side",
        rel(t.ratio_ci_low), rel(t.ratio_ci_high), t.p_value, t.run_cv, t.threshold if tested else None,
        t.detectable, t.runs_needed,
    )  # fmt: skip
