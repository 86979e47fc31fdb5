"""Latency statistics (stdlib only): percentiles, a median confidence interval, stability checks.

All functions take raw samples in nanoseconds (ints, as a clock gives them) and report milliseconds.
Rules, so that every figure can be trusted and checked by hand:

* percentiles interpolate linearly between order statistics (numpy's default, "type 7");
* the p50 95% confidence interval is distribution-free, from order statistics: ranks
  ``floor(n/2 - 1.96*sqrt(n)/2)`` and ``ceil(1 + n/2 + 1.96*sqrt(n)/2)`` (1-based), None below n = 6;
* a percentile q is only claimed when at least one sample lies beyond it: ``n * (1 - q) >= 1``
  (p90 needs n >= 10, p99 needs n >= 100);
* MAD is the raw median absolute deviation from the median (not scaled);
* outliers are counted, never dropped: outside Tukey's far fences ``[Q1 - 3 IQR, Q3 + 3 IQR]``;
* drift compares the medians of the first and last thirds of the timed runs (None below n = 9);
* the verdict is "unstable" when CV > 5%, |drift| > 10%, repeats disagree by more than 5%, or the
  board throttled; reasons are listed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from wire.schema import LatencyStats

NS_PER_MS = 1_000_000
CV_LIMIT = 0.05
DRIFT_LIMIT_PCT = 10.0
REPEAT_SPREAD_LIMIT = 0.05
Z95 = 1.959963984540054


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy ``method="linear"``). ``q`` in [0, 1]."""
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    pos = q * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def median(values: Sequence[float]) -> float:
    return percentile(sorted(values), 0.5)


def claimable(n: int, q: float) -> bool:
    """A percentile q is only reported when at least one sample lies above it."""
    return n * (1.0 - q) >= 1.0 - 1e-9


def median_ci_ranks(n: int, z: float = Z95) -> tuple[int, int] | None:
    """1-based ranks (j, k) of the order statistics bounding the median's confidence interval."""
    if n < 6:
        return None
    half = z * math.sqrt(n) / 2.0
    j = max(1, math.floor(n / 2.0 - half))
    k = min(n, math.ceil(1 + n / 2.0 + half))
    return j, k


def median_ci(sorted_values: Sequence[float], z: float = Z95) -> tuple[float, float] | None:
    ranks = median_ci_ranks(len(sorted_values), z)
    if ranks is None:
        return None
    j, k = ranks
    return sorted_values[j - 1], sorted_values[k - 1]


def mad(values: Sequence[float]) -> float:
    m = median(values)
    return median([abs(v - m) for v in values])


def count_outliers(sorted_values: Sequence[float], k: float = 3.0) -> int:
    q1, q3 = percentile(sorted_values, 0.25), percentile(sorted_values, 0.75)
    iqr = q3 - q1
    lo, hi = q1 - k * iqr, q3 + k * iqr
    return sum(1 for v in sorted_values if v < lo or v > hi)


def drift_pct(values: Sequence[float]) -> float | None:
    """Median of the last third vs the first third, in percent of the first (positive = slower)."""
    n = len(values)
    if n < 9:
        return None
    third = n // 3
    first, last = median(values[:third]), median(values[-third:])
    if first == 0:
        return None
    return (last - first) / first * 100.0


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, 0.0
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var)


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    s = sorted(values)
    return percentile(s, 0.25), percentile(s, 0.5), percentile(s, 0.75)


def windows_agree(previous: Sequence[float], current: Sequence[float], tolerance: float) -> bool:
    """Two consecutive warmup windows agree when Q1, median and Q3 each differ by at most
    ``tolerance`` relative to the previous window's median."""
    a, b = quartiles(previous), quartiles(current)
    scale = a[1]
    if scale <= 0:
        return a == b
    return all(abs(x - y) <= tolerance * scale for x, y in zip(a, b, strict=False))


def verdict(
    cv: float,
    drift: float | None,
    throttled: bool | None = None,
    repeat_spread: float | None = None,
    warmup_stable: bool = True,
) -> tuple[bool, str]:
    """(stable, human verdict). Warmup that hit its time cap is noted but does not by itself fail."""
    reasons = []
    if cv > CV_LIMIT:
        reasons.append(f"CV {cv * 100:.1f}% > {CV_LIMIT * 100:.0f}%")
    if drift is not None and abs(drift) > DRIFT_LIMIT_PCT:
        reasons.append(f"drift {drift:+.1f}% between first and last third")
    if repeat_spread is not None and repeat_spread > REPEAT_SPREAD_LIMIT:
        reasons.append(f"repeat medians differ by {repeat_spread * 100:.1f}%")
    if throttled:
        reasons.append("board throttled")
    note = "" if warmup_stable else " (warmup hit its time cap before windows agreed)"
    if reasons:
        return False, "unstable: " + "; ".join(reasons) + note
    return True, "stable" + note


def summarize(
    samples_ns: Sequence[int],
    *,
    items_per_run: int = 1,
    warmup_runs: int = 0,
    warmup_stable: bool = True,
    throttled: bool | None = None,
    repeat_medians_ms: Sequence[float] = (),
    keep_samples: bool = True,
) -> LatencyStats:
    """Timed samples (ns) -> :class:`LatencyStats` in milliseconds."""
    if not samples_ns:
        raise ValueError("no timed samples")
    ms = [s / NS_PER_MS for s in samples_ns]
    ordered = sorted(ms)
    n = len(ms)
    mean, std = mean_std(ms)
    cv = std / mean if mean > 0 else 0.0
    ci = median_ci(ordered)
    drift = drift_pct(ms)
    spread = None
    if len(repeat_medians_ms) >= 2:
        mid = median(repeat_medians_ms)
        spread = (max(repeat_medians_ms) - min(repeat_medians_ms)) / mid if mid > 0 else None
    stable, text = verdict(cv, drift, throttled, spread, warmup_stable)
    total_s = math.fsum(samples_ns) / 1e9
    return LatencyStats(
        n=n,
        mean_ms=mean,
        std_ms=std,
        cv=cv,
        min_ms=ordered[0],
        p50_ms=percentile(ordered, 0.5),
        p50_ci_low_ms=ci[0] if ci else None,
        p50_ci_high_ms=ci[1] if ci else None,
        p90_ms=percentile(ordered, 0.9) if claimable(n, 0.9) else None,
        p99_ms=percentile(ordered, 0.99) if claimable(n, 0.99) else None,
        max_ms=ordered[-1],
        mad_ms=mad(ms),
        outliers=count_outliers(ordered),
        drift_pct=drift,
        throughput_ips=(items_per_run * n / total_s) if total_s > 0 else 0.0,
        warmup_runs=warmup_runs,
        stable=stable,
        verdict=text,
        repeat_medians_ms=tuple(repeat_medians_ms),
        samples_ms=tuple(ms) if keep_samples else None,
    )
