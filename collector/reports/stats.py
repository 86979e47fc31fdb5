"""Latency statistics for reports: pooled percentiles from histograms, box stats, run-level tests.

Percentiles across runs are computed from the *pooled* distribution of every timed sample of every
run (never by averaging per-run p50s). To make that fast over a million stored runs, each run's samples
are kept once as a sparse log-scale histogram (the codec: :mod:`collector.store.histograms`); pooling
runs is a sum of their dense counts, read here.

Comparing two sets of runs is the opposite case: the *run* is the unit of replication (another process
start, another warm-up, another board temperature moves a whole run), so the test is on one number per
run, its median (:func:`compare_run_medians`; rule and calibration in :mod:`collector.reports.compare`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

import numpy as np

from collector.store.histograms import LOG_R, X0_MS


@dataclass(frozen=True)
class Pooled:
    n: int
    p50_ms: float
    p90_ms: float
    p50_ci_low_ms: float
    p50_ci_high_ms: float


def _value_at_rank(hist: np.ndarray, cum: np.ndarray, rank: float) -> float:
    """The value at a 0-based fractional rank, interpolating geometrically inside the bucket."""
    total = cum[-1]
    rank = min(max(rank, 0.0), total - 1e-9)
    i = int(np.searchsorted(cum, rank, side="right"))
    before = cum[i - 1] if i > 0 else 0.0
    frac = (rank - before + 0.5) / hist[i] if hist[i] else 0.5
    frac = min(max(frac, 0.0), 1.0)
    return float(X0_MS * math.exp((i + frac) * LOG_R))


def quantile(hist: np.ndarray, q: float) -> float:
    cum = np.cumsum(hist)
    if cum[-1] <= 0:
        return math.nan
    return _value_at_rank(hist, cum, q * (cum[-1] - 1))


def pooled_stats(hist: np.ndarray) -> Pooled | None:
    """p50, p90 and a distribution-free 95 % CI of the median (order statistics) of a pooled histogram."""
    cum = np.cumsum(hist)
    total = float(cum[-1]) if cum.size else 0.0
    if total <= 0:
        return None
    half = 1.959964 * math.sqrt(total) / 2
    mid = (total - 1) / 2
    return Pooled(
        n=round(total),
        p50_ms=_value_at_rank(hist, cum, mid),
        p90_ms=_value_at_rank(hist, cum, 0.9 * (total - 1)),
        p50_ci_low_ms=_value_at_rank(hist, cum, mid - half),
        p50_ci_high_ms=_value_at_rank(hist, cum, mid + half),
    )


def box_stats(hist: np.ndarray) -> dict[str, float]:
    """Five-number summary (p5, p25, p50, p75, p95) for a box plot of a pooled histogram."""
    return {
        "whislo": quantile(hist, 0.05),
        "q1": quantile(hist, 0.25),
        "med": quantile(hist, 0.5),
        "q3": quantile(hist, 0.75),
        "whishi": quantile(hist, 0.95),
    }


# ---------------------------------------------------------------- Student's t (stdlib only)


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (continued fraction, modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-14:
            break
    return math.exp(log_front) * f / a


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` (> 0, not necessarily whole) degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return _betainc(df / 2.0, 0.5, df / (df + t * t))


def _hill_t(two_sided: float, df: float) -> float:
    """G. W. Hill's approximation of the t quantile for a two-sided tail probability (CACM Algorithm
    396, 1970): within 0.1 % for df >= 2.5 and a few % below, the start of :func:`t_quantile`'s Newton."""
    a = 1.0 / (df - 0.5)
    b = 48.0 / (a * a)
    c = ((20700.0 * a / b - 98.0) * a - 16.0) * a + 96.36
    d = ((94.5 / (b + c) - 3.0) / b + 1.0) * math.sqrt(a * math.pi / 2.0) * df
    y = (d * two_sided) ** (2.0 / df)
    if y > 0.05 + a:
        x = NormalDist().inv_cdf(two_sided * 0.5)
        y = x * x
        if df < 5:
            c += 0.3 * (df - 4.5) * (x + 0.6)
        c = (((0.05 * d * x - 5.0) * x - 7.0) * x - 2.0) * x + b + c
        y = (((((0.4 * y + 6.3) * y + 36.0) * y + 94.5) / c - y - 3.0) / b + 1.0) * x
        y = math.expm1(a * y * y)
    else:
        y = ((1.0 / (((df + 6.0) / (df * y) - 0.089 * d - 0.822) * (df + 2.0) * 3.0) + 0.5 / (df + 4.0)) * y
             - 1.0) * (df + 1.0) / (df + 2.0) + 1.0 / y  # fmt: skip
    return math.sqrt(df * y)


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (Newton on the CDF)."""
    if not 0.0 < q < 1.0:
        raise ValueError("q must be in (0, 1)")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    if q == 0.5:
        return 0.0
    if df == 1.0:
        return math.tan(math.pi * (q - 0.5))
    if df == 2.0:
        return (2 * q - 1) / math.sqrt(2 * q * (1 - q))
    t = _hill_t(2.0 * (1.0 - q), df)
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    tail = 1.0 - q
    for _ in range(100):
        upper = 0.5 * t_two_sided_p(t, df)  # P(T > t) for t > 0
        density = math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))
        step = (upper - tail) / density
        t = max(t + step, t / 2)  # the CDF is concave for t > 0: Newton from below, never past 0
        if abs(step) <= 1e-12 * max(1.0, t):
            break
    return t


@lru_cache(maxsize=4096)
def _t_quantile_cached(q: float, df: int) -> float:
    return t_quantile(q, float(df))


# ---------------------------------------------------------------- comparing two sets of runs

MIN_RUNS = 2  # below this on a side there is no run-to-run variation to test against
REGRESSION, IMPROVEMENT, NO_CHANGE = "regression", "improvement", "no significant change"
TOO_FEW_RUNS = f"inconclusive (fewer than {MIN_RUNS} runs on a side)"
MAX_RUNS_NEEDED = 10_000


def needs_runs(n: int | None) -> str:
    """The verdict of a row whose data cannot decide: how many runs a side would."""
    if n is None:
        return f"inconclusive (needs more than {MAX_RUNS_NEEDED} runs a side)"
    return f"inconclusive (needs {n} runs a side)"


@dataclass(frozen=True)
class RunTest:
    """Baseline vs candidate from one median per run (Welch's t-test on ln(median); see compare_run_medians).

    Ratios are candidate / baseline (1.10 = 10 % slower). ``None`` where too few runs give no figure."""

    baseline_runs: int
    candidate_runs: int
    baseline_ms: float  # geometric mean of the baseline runs' medians
    candidate_ms: float
    ratio: float
    ratio_ci_low: float | None
    ratio_ci_high: float | None
    p_value: float | None
    df: float | None
    run_cv: float | None  # run-to-run variation: pooled SD of ln(run median), as a relative change
    threshold: float  # the minimum effect applied: max(min_effect, run_cv)
    detectable: float | None  # the change detected with the stated power at these n and run_cv
    runs_needed: int | None  # runs a side to decide the change seen (rows that cannot decide)
    verdict: str

    @property
    def flagged(self) -> bool:
        return self.verdict in (REGRESSION, IMPROVEMENT)


def runs_needed(effect: float, sd: float, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Runs a side (equal n) for a two-sided t-test at ``alpha`` to detect a shift of ``effect`` in
    ln(median) with ``power``, when ln(run median) has SD ``sd``; None past MAX_RUNS_NEEDED."""
    if effect <= 0:
        return None
    if sd <= 0:
        return MIN_RUNS
    for n in range(MIN_RUNS, MAX_RUNS_NEEDED + 1):
        df = 2 * n - 2
        crit = _t_quantile_cached(1 - alpha / 2, df) + _t_quantile_cached(power, df)
        if crit * sd * math.sqrt(2 / n) <= effect:
            return n
    return None


def _log_moments(values_ms: Sequence[float]) -> tuple[int, float, float]:
    """(n, mean, sample variance) of ln(values); plain floats: the sides are a few runs each."""
    try:
        logs = [math.log(v) for v in values_ms]
    except (ValueError, TypeError):
        raise ValueError("run medians must be positive numbers") from None
    n = len(logs)
    if n == 0 or not all(math.isfinite(v) for v in logs):
        raise ValueError("both sides need positive, finite run medians")
    mean = math.fsum(logs) / n
    var = math.fsum((v - mean) ** 2 for v in logs) / (n - 1) if n > 1 else 0.0
    return n, mean, var


def compare_run_medians(
    baseline_medians_ms: Sequence[float],
    candidate_medians_ms: Sequence[float],
    *,
    alpha: float = 0.05,
    min_effect: float = 0.01,
    power: float = 0.8,
) -> RunTest:
    """Welch's t-test on ln(run median), one value per run (the run is the unit of replication).

    A row is flagged (regression / improvement) when p < ``alpha`` and |ln(ratio)| >= ln(1 + threshold),
    threshold = max(``min_effect``, run-to-run variation). Not flagged but at least the threshold: the data
    cannot decide, and the verdict says how many runs a side would (``power`` for the change seen).
    Smaller than the threshold: "no significant change". Fewer than 2 runs on a side: no test.
    """
    (n1, m1, v1), (n2, m2, v2) = _log_moments(baseline_medians_ms), _log_moments(candidate_medians_ms)
    d = m2 - m1
    base = RunTest(n1, n2, math.exp(m1), math.exp(m2), math.exp(d), None, None, None, None,
                   None, min_effect, None, None, TOO_FEW_RUNS)  # fmt: skip
    if min(n1, n2) < MIN_RUNS:
        return base
    sd = math.sqrt(((n1 - 1) * v1 + (n2 - 1) * v2) / (n1 + n2 - 2))
    se2 = v1 / n1 + v2 / n2
    if se2 > 0:
        df = se2**2 / ((v1 / n1) ** 2 / (n1 - 1) + (v2 / n2) ** 2 / (n2 - 1))
        se = math.sqrt(se2)
        p = t_two_sided_p(d / se, df)
    else:  # every run of both sides had the same median
        df, se, p = float(n1 + n2 - 2), 0.0, 0.0 if d else 1.0
    half = t_quantile(1 - alpha / 2, df) * se
    threshold = max(min_effect, math.expm1(sd))
    big_enough = abs(d) >= math.log1p(threshold) * (1 - 1e-12)
    needed = None
    if p < alpha and big_enough:
        verdict = REGRESSION if d > 0 else IMPROVEMENT
    elif big_enough:
        needed = max(runs_needed(abs(d), sd, alpha, power) or MAX_RUNS_NEEDED + 1, max(n1, n2) + 1)
        verdict = needs_runs(needed if needed <= MAX_RUNS_NEEDED else None)
    else:
        verdict = NO_CHANGE
    detectable = math.expm1(half + t_quantile(power, df) * se) if se else 0.0
    return RunTest(n1, n2, base.baseline_ms, base.candidate_ms, math.exp(d), math.exp(d - half),
                   math.exp(d + half), p, df, math.expm1(sd), threshold, detectable, needed,
                   verdict)  # fmt: skip
