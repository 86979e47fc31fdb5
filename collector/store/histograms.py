"""The latency histogram codec of the report index: mergeable sparse per-run histograms.

Each run's samples are kept once as a sparse log-scale histogram: bucket ``i`` covers
``[X0 * R**i, X0 * R**(i+1))`` ms with ``R = 1.01`` (1 % wide, so a percentile read from it is within
0.5 % of the exact value). Merging runs is a sum of counts. A run stored without raw samples
(``keep_samples = false``) is approximated from its recorded quantiles (min, p50, p90, p99, max).

Blob layout: packed little-endian ``(uint16 bucket, uint32 count)`` pairs, sorted by bucket. This module
is the one place that knows it; the store writes blobs with it, the reports read them with it
(percentiles over the dense counts: :mod:`collector.reports.stats`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
