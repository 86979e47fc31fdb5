"""Latency statistics for reports: mergeable per-run histograms, pooled percentiles, bootstrap.

Percentiles across runs are computed from the *pooled* distribution of every timed sample of every
run (never by averaging per-run p50s). To make that fast over a million stored runs, each run's samples
are kept once as a sparse log-scale histogram: bucket ``i`` covers ``[X0 * R**i, X0 * R**(i+1))`` ms with
``R = 1.01`` (1 % wide, so a percentile read from it is within 0.5 % of the exact value). Merging runs is
a sum of counts. A run stored without raw samples (``keep_samples = false``) is approximated from its
recorded quantiles (min, p50, p90, p99, max).

Blob layout: packed little-endian ``(uint16 bucket, uint32 count)`` pairs, sorted by bucket.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

X0_MS = 1e-3  # 1 microsecond
RATIO = 1.01
LOG_R = math.log(RATIO)
N_BUCKETS = 2400  # up to X0 * R**2400 ~ 2.3e7 ms
ENTRY = np.dtype([("b", "<u2"), ("c", "<u4")])


def bucket_of(values_ms: np.ndarray) -> np.ndarray:
    v = np.clip(np.asarray(values_ms, dtype=np.float64), X0_MS, None)
    idx = np.floor(np.log(v / X0_MS) / LOG_R).astype(np.int64)
    return np.clip(idx, 0, N_BUCKETS - 1)


def bucket_edges(idx: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    i = np.asarray(idx, dtype=np.float64)
    return X0_MS * np.exp(i * LOG_R), X0_MS * np.exp((i + 1) * LOG_R)


def encode_hist(values_ms: Sequence[float] | np.ndarray, weight_to: int | None = None) -> bytes:
    """The sparse histogram blob of a run's samples; counts rescaled to ``weight_to`` samples if given."""
    values = np.asarray(values_ms, dtype=np.float64)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return b""
    buckets, counts = np.unique(bucket_of(values), return_counts=True)
    if weight_to and weight_to > values.size:
        counts = np.maximum(1, np.round(counts * (weight_to / values.size))).astype(np.int64)
    out = np.empty(buckets.size, dtype=ENTRY)
    out["b"] = buckets
    out["c"] = np.minimum(counts, 2**32 - 1)
    return out.tobytes()


def synthetic_samples(
    n: int, min_ms: float, p50_ms: float, p90_ms: float | None, p99_ms: float | None, max_ms: float
) -> np.ndarray:
    """Stand-in samples for a run stored without raw samples: log-linear between its known quantiles."""
    qs = [0.0, 0.5]
    xs = [min_ms, p50_ms]
    for q, x in ((0.9, p90_ms), (0.99, p99_ms)):
        if x is not None and x >= xs[-1]:
            qs.append(q)
            xs.append(x)
    qs.append(1.0)
    xs.append(max(max_ms, xs[-1]))
    m = int(min(max(n, 1), 1000))
    pos = (np.arange(m) + 0.5) / m
    logs = np.interp(pos, qs, np.log(np.clip(xs, X0_MS, None)))
    return np.exp(logs)


def decode_many(blobs: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Entries of many blobs at once and, per entry, the index of the blob it came from."""
    lengths = np.fromiter((len(b) for b in blobs), dtype=np.int64, count=len(blobs)) // ENTRY.itemsize
    entries = np.frombuffer(b"".join(blobs), dtype=ENTRY)
    owner = np.repeat(np.arange(len(blobs)), lengths)
    return entries, owner


def merge_by_group(blobs: Sequence[bytes], groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Dense ``(n_groups, N_BUCKETS)`` count matrix: the pooled histogram of each group of runs."""
    if not len(blobs):
        return np.zeros((n_groups, N_BUCKETS), dtype=np.float64)
    entries, owner = decode_many(blobs)
    flat = groups[owner].astype(np.int64) * N_BUCKETS + entries["b"].astype(np.int64)
    counts = np.bincount(flat, weights=entries["c"].astype(np.float64), minlength=n_groups * N_BUCKETS)
    return counts.reshape(n_groups, N_BUCKETS)


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


# ---------------------------------------------------------------- comparing two sets of runs


@dataclass(frozen=True)
class MedianDiff:
    baseline_ms: float
    candidate_ms: float
    diff_ms: float  # candidate - baseline (negative = faster)
    ci_low_ms: float
    ci_high_ms: float
    rel: float  # diff / baseline
    method: str

    @property
    def significant(self) -> bool:
        return self.ci_low_ms > 0 or self.ci_high_ms < 0


def bootstrap_median_diff(
    baseline_runs: Sequence[np.ndarray],
    candidate_runs: Sequence[np.ndarray],
    *,
    iterations: int = 1000,
    confidence: float = 0.95,
    max_per_run: int = 2000,
    seed: int = 0,
) -> MedianDiff:
    """Bootstrap CI of ``median(candidate) - median(baseline)`` from raw samples.

    Two-level when a side has several runs: runs are resampled first, then samples within each
    chosen run, so run-to-run variation (a reboot, a warmer day) widens the interval as it should.
    """
    rng = np.random.default_rng(seed)

    def prep(runs: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = []
        for r in runs:
            a = np.asarray(r, dtype=np.float64)
            if a.size > max_per_run:
                a = rng.choice(a, max_per_run, replace=False)
            if a.size:
                out.append(a)
        return out

    base, cand = prep(baseline_runs), prep(candidate_runs)
    if not base or not cand:
        raise ValueError("both sides need raw samples")

    def resample(runs: list[np.ndarray]) -> float:
        picked = [runs[i] for i in rng.integers(0, len(runs), len(runs))] if len(runs) > 1 else runs
        return float(np.median(np.concatenate([r[rng.integers(0, r.size, r.size)] for r in picked])))

    b_med = float(np.median(np.concatenate(base)))
    c_med = float(np.median(np.concatenate(cand)))
    diffs = np.array([resample(cand) - resample(base) for _ in range(iterations)])
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(diffs, [alpha, 1 - alpha])
    method = "bootstrap (runs, then samples)" if len(base) > 1 or len(cand) > 1 else "bootstrap (samples)"
    return MedianDiff(b_med, c_med, c_med - b_med, float(lo), float(hi), (c_med - b_med) / b_med, method)


def merge_blobs(blobs: Sequence[bytes]) -> bytes:
    """One sparse histogram blob holding the sum of several."""
    entries, _ = decode_many([b for b in blobs if b])
    if entries.size == 0:
        return b""
    buckets, inverse = np.unique(entries["b"], return_inverse=True)
    counts = np.bincount(inverse, weights=entries["c"].astype(np.float64))
    out = np.empty(buckets.size, dtype=ENTRY)
    out["b"] = buckets
    out["c"] = np.minimum(np.round(counts), 2**32 - 1)
    return out.tobytes()
