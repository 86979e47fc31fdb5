"""Latency statistics for reports: pooled percentiles from histograms, box stats, bootstrap.

Percentiles across runs are computed from the *pooled* distribution of every timed sample of every
run (never by averaging per-run p50s). To make that fast over a million stored runs, each run's samples
are kept once as a sparse log-scale histogram (the codec: :mod:`collector.store.histograms`); pooling
runs is a sum of their dense counts, read here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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
