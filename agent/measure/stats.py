"""Latency statistics (stdlib only): percentiles, a median confidence interval, stability checks.

All functions take raw samples in nanoseconds (ints, as a clock gives them) and report milliseconds.
Rules, so that every figure can be trusted and checked by hand:

* percentiles interpolate linearly between order statistics (numpy's default, "type 7");
* the p50 95% confidence interval is distribution-free, from order statistics: ranks
  ``floor(n/2 - 1.96*sqrt(n)/2)`` and ``ceil(1 + n/2 + 1.96*sqrt(n)/2)`` (1-based), None below n = 6;
* p90 and p99 are only claimed from their sample floors on (``wire.schema.PERCENTILE_FLOORS``, MLPerf's:
  p90 needs n >= 64, p99 needs n >= 662); below, the field is None (unsupported);
* MAD is the raw median absolute deviation from the median (not scaled);
* outliers are counted, never dropped: outside Tukey's far fences ``[Q1 - 3 IQR, Q3 + 3 IQR]``;
* drift compares the medians of the first and last thirds of the timed runs (None below n = 9);
* the verdict is "unstable" when CV > 5%, |drift| > 10%, repeats disagree by more than 5%, or the
  board throttled; reasons are listed.

How samples are kept (:class:`Kept`): all of them, in order, up to :data:`EXACT_LIMIT` runs; past it a
log-bucket histogram (:data:`HIST_BITS`: 1024 buckets per power of two, each at most 2**-10 = 0.098% of its
lower bound wide) plus exact n, sum, sum of squares, min and max, and an order-preserving systematic
subsample (every ``stride``-th run, ``stride`` a power of two, at most :data:`ORDERED_LIMIT` runs). Read from
the histogram, a run's value is its bucket's midpoint (within :data:`HIST_RELATIVE_ERROR` = 2**-11 = 0.049%
of the true value), so p50, p90, p99 and the p50 CI bounds are within 0.049% of the exact figures, MAD within
0.049% x (MAD + 2 x p50), mean, std, min, max, n and throughput are exact, an outlier within 0.049% of a
fence may be counted on either side, and drift is read from the subsample.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from wire.schema import PERCENTILE_FLOORS, LatencyStats

NS_PER_MS = 1_000_000
CV_LIMIT = 0.05
DRIFT_LIMIT_PCT = 10.0
REPEAT_SPREAD_LIMIT = 0.05
Z95 = 1.959963984540054
EXACT_LIMIT = 65_536  # runs kept exactly (an int64 array: 512 KiB); a record of them stays under 1 MiB
ORDERED_LIMIT = 32_768  # runs of the ordered subsample past EXACT_LIMIT (256 KiB)
HIST_BITS = 10  # histogram buckets per power of two: 2**HIST_BITS
HIST_RELATIVE_ERROR = 2.0 ** -(HIST_BITS + 1)  # a bucket's midpoint is this close to each of its runs
_FLOOR_BY_Q = {0.9: PERCENTILE_FLOORS["p90_ms"], 0.99: PERCENTILE_FLOORS["p99_ms"]}


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
    """p90 and p99 from their floors on (MLPerf: 64 and 662); any other q when a sample lies above it."""
    if q in _FLOOR_BY_Q:
        return n >= _FLOOR_BY_Q[q]
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


# ---------------------------------------------------------------- samples as kept


def bucket_floor(value_ns: int) -> int:
    """The lower bound of the histogram bucket of ``value_ns``: its top HIST_BITS + 1 bits (below
    2**(HIST_BITS + 1) ns, the value itself: buckets one ns wide)."""
    shift = value_ns.bit_length() - HIST_BITS - 1
    return value_ns if shift <= 0 else (value_ns >> shift) << shift


def bucket_mid(floor_ns: int) -> float:
    """The midpoint of the bucket starting at ``floor_ns`` (the value read for each of its runs)."""
    shift = floor_ns.bit_length() - HIST_BITS - 1
    return float(floor_ns) if shift <= 0 else floor_ns + ((1 << shift) - 1) / 2.0


@dataclass(frozen=True)
class Kept:
    """The timed samples (ns) as kept: ``buckets`` empty means exact (``ordered`` is every run, in order);
    else ``buckets`` is the histogram, ``(bucket floor, count)`` ascending, and ``ordered`` every
    ``stride``-th run. n, the sums, min and max are exact either way."""

    n: int
    total_ns: int
    total_sq_ns: int
    min_ns: int
    max_ns: int
    ordered: tuple[int, ...]
    stride: int = 1
    buckets: tuple[tuple[int, int], ...] = ()

    @property
    def exact(self) -> bool:
        return not self.buckets

    @classmethod
    def of(cls, samples_ns: Iterable[int]) -> Kept:
        values = tuple(int(v) for v in samples_ns)
        if not values:
            raise ValueError("no timed samples")
        return cls(len(values), sum(values), sum(v * v for v in values), min(values), max(values), values)

    def binned(self) -> Kept:
        """This as a histogram (itself if it is one); the subsample thinned to ORDERED_LIMIT."""
        if not self.exact:
            return self
        counts = Counter(map(bucket_floor, self.ordered))
        return thin(self, tuple(sorted(counts.items())), self.ordered, 1)

    def describe(self) -> str:
        """How the samples were kept, for the record (``config.options["samples"]``)."""
        if self.exact:
            return f"exact: all {self.n} timed runs"
        return (
            f"log histogram of {self.n} runs, {1 << HIST_BITS} buckets per power of two: percentiles and "
            f"p50 CI within {HIST_RELATIVE_ERROR * 100:.3f}%; n, mean, std, min, max exact; drift and "
            f"samples_ms from every {self.stride}th run ({len(self.ordered)})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "total_ns": self.total_ns,
            "total_sq_ns": self.total_sq_ns,
            "min_ns": self.min_ns,
            "max_ns": self.max_ns,
            "ordered": list(self.ordered),
            "stride": self.stride,
            "buckets": [list(b) for b in self.buckets],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Kept:
        return cls(
            int(d["n"]),
            int(d["total_ns"]),
            int(d["total_sq_ns"]),
            int(d["min_ns"]),
            int(d["max_ns"]),
            tuple(int(v) for v in d["ordered"]),
            int(d["stride"]),
            tuple((int(f), int(c)) for f, c in d["buckets"]),
        )


def thin(sums: Kept, buckets: tuple[tuple[int, int], ...], ordered: Sequence[int], stride: int) -> Kept:
    """A histogram with the n, sums, min and max of ``sums``; ``ordered`` halved (stride doubled) until it
    holds at most ORDERED_LIMIT runs."""
    while len(ordered) > ORDERED_LIMIT:
        ordered, stride = ordered[::2], stride * 2
    return Kept(
        sums.n, sums.total_ns, sums.total_sq_ns, sums.min_ns, sums.max_ns, tuple(ordered), stride, buckets
    )


def merge_kept(parts: Sequence[Kept]) -> Kept:
    """The samples of several repeats as one (in order): exact while they fit in EXACT_LIMIT runs, else a
    histogram whose subsample takes every run at the coarsest stride of the parts."""
    if len(parts) == 1:
        return parts[0]
    if all(p.exact for p in parts) and sum(p.n for p in parts) <= EXACT_LIMIT:
        return Kept.of(v for p in parts for v in p.ordered)
    binned = [p.binned() for p in parts]
    counts: Counter[int] = Counter()
    for p in binned:
        for floor, count in p.buckets:
            counts[floor] += count
    stride = max(p.stride for p in binned)
    ordered = [v for p in binned for v in p.ordered[:: stride // p.stride]]
    sums = Kept(
        sum(p.n for p in parts),
        sum(p.total_ns for p in parts),
        sum(p.total_sq_ns for p in parts),
        min(p.min_ns for p in parts),
        max(p.max_ns for p in parts),
        (),
    )
    return thin(sums, tuple(sorted(counts.items())), ordered, stride)


class _Histogram:
    """Rank lookups in a Kept histogram: run ``r`` (0-based, ascending) reads as its bucket's midpoint,
    clamped to the exact [min, max]."""

    def __init__(self, kept: Kept) -> None:
        self.n = kept.n
        lo, hi = float(kept.min_ns), float(kept.max_ns)
        self.values = [min(max(bucket_mid(f), lo), hi) for f, _ in kept.buckets]
        self.counts = [c for _, c in kept.buckets]
        self.ends = list(accumulate(self.counts))  # ends[i]: runs in buckets 0..i

    def at_rank(self, rank: int) -> float:
        return self.values[bisect_right(self.ends, rank)]

    def percentile(self, q: float) -> float:
        """Type 7, as :func:`percentile` on the sorted runs."""
        pos = q * (self.n - 1)
        lo = math.floor(pos)
        a, b = self.at_rank(lo), self.at_rank(min(lo + 1, self.n - 1))
        return a + (b - a) * (pos - lo)

    def mad(self, center: float) -> float:
        pairs = sorted((abs(v - center), c) for v, c in zip(self.values, self.counts, strict=True))
        ends = list(accumulate(c for _, c in pairs))
        pos = 0.5 * (self.n - 1)
        lo = math.floor(pos)
        a = pairs[bisect_right(ends, lo)][0]
        b = pairs[bisect_right(ends, min(lo + 1, self.n - 1))][0]
        return a + (b - a) * (pos - lo)

    def outliers(self, k: float = 3.0) -> int:
        q1, q3 = self.percentile(0.25), self.percentile(0.75)
        lo, hi = q1 - k * (q3 - q1), q3 + k * (q3 - q1)
        return sum(c for v, c in zip(self.values, self.counts, strict=True) if v < lo or v > hi)


def kept_percentile(kept: Kept, q: float) -> float:
    """Percentile q (type 7, ns) of the kept samples: exact, or read from the histogram."""
    return percentile(sorted(kept.ordered), q) if kept.exact else _Histogram(kept).percentile(q)


def _figures_ns(kept: Kept) -> dict[str, Any]:
    """The order statistics (ns) of the kept samples: exact, or read from the histogram."""
    n = kept.n
    if kept.exact:
        ordered = sorted(kept.ordered)
        ci = median_ci(ordered)
        pct = {q: percentile(ordered, q) for q in (0.5, 0.9, 0.99)}
        return {"pct": pct, "ci": ci, "mad": mad(kept.ordered), "outliers": count_outliers(ordered)}
    hist = _Histogram(kept)
    ranks = median_ci_ranks(n)
    pct = {q: hist.percentile(q) for q in (0.5, 0.9, 0.99)}
    return {
        "pct": pct,
        "ci": (hist.at_rank(ranks[0] - 1), hist.at_rank(ranks[1] - 1)) if ranks else None,
        "mad": hist.mad(pct[0.5]),
        "outliers": hist.outliers(),
    }


def summarize(
    samples_ns: Sequence[int] | Kept,
    *,
    items_per_run: int = 1,
    warmup_runs: int = 0,
    warmup_stable: bool = True,
    throttled: bool | None = None,
    repeat_medians_ms: Sequence[float] = (),
    keep_samples: bool = True,
) -> LatencyStats:
    """Timed samples (ns; all of them, or as :class:`Kept`) -> :class:`LatencyStats` in milliseconds.
    ``samples_ms`` is every run when exact, else the ordered subsample (readers weight it to ``n``)."""
    kept = samples_ns if isinstance(samples_ns, Kept) else Kept.of(samples_ns)
    n = kept.n
    fig = _figures_ns(kept)
    mean_ns = kept.total_ns / n
    var_num = n * kept.total_sq_ns - kept.total_ns**2  # exact integers: n(n-1) var
    std_ns = math.sqrt(var_num / (n * (n - 1))) if n > 1 else 0.0
    cv = std_ns / mean_ns if mean_ns > 0 else 0.0
    drift = drift_pct(kept.ordered)
    spread = None
    if len(repeat_medians_ms) >= 2:
        mid = median(repeat_medians_ms)
        spread = (max(repeat_medians_ms) - min(repeat_medians_ms)) / mid if mid > 0 else None
    stable, text = verdict(cv, drift, throttled, spread, warmup_stable)
    total_s = kept.total_ns / 1e9
    pct, ci = fig["pct"], fig["ci"]
    return LatencyStats(
        n=n,
        mean_ms=mean_ns / NS_PER_MS,
        std_ms=std_ns / NS_PER_MS,
        cv=cv,
        min_ms=kept.min_ns / NS_PER_MS,
        p50_ms=pct[0.5] / NS_PER_MS,
        p50_ci_low_ms=ci[0] / NS_PER_MS if ci else None,
        p50_ci_high_ms=ci[1] / NS_PER_MS if ci else None,
        p90_ms=pct[0.9] / NS_PER_MS if claimable(n, 0.9) else None,
        p99_ms=pct[0.99] / NS_PER_MS if claimable(n, 0.99) else None,
        max_ms=kept.max_ns / NS_PER_MS,
        mad_ms=fig["mad"] / NS_PER_MS,
        outliers=fig["outliers"],
        drift_pct=drift,
        throughput_ips=(items_per_run * n / total_s) if total_s > 0 else 0.0,
        warmup_runs=warmup_runs,
        stable=stable,
        verdict=text,
        repeat_medians_ms=tuple(repeat_medians_ms),
        samples_ms=tuple(v / NS_PER_MS for v in kept.ordered) if keep_samples else None,
    )
