"""The timing loops, with an injected clock (``clock()`` returns integer nanoseconds).

* :func:`warmup` runs at least ``warmup_min_runs`` and until two consecutive windows of
  ``warmup_window`` runs agree on Q1, median and Q3 within ``warmup_tolerance`` (relative to the median),
  or until ``warmup_max_s``. Warmup values are returned apart and never enter the statistics.
* :func:`timed`, the stop rule: runs until at least ``min_runs`` AND at least
  ``min_time_s`` have been timed. ``max_time_s`` (never below ``min_time_s``: see :func:`with_stop_rule`)
  ends a slow model's loop with fewer than ``min_runs`` runs; ``max_runs`` (0: none, the default) is only
  a cap the user sets, and it can end the loop before ``min_time_s``, which the record's stop reason says.
  Only ``step()`` sits between the two clock reads. Samples are kept in bounded memory
  (:class:`SampleKeeper`; :mod:`agent.measure.stats` for how and with what resolution).

``cancel`` (a threading.Event) is checked every 16 runs; an aborted loop returns what it has.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.errors import BenchError
from agent.measure.stats import EXACT_LIMIT, HIST_BITS, ORDERED_LIMIT, Kept, thin, windows_agree
from wire.schema import ProtocolSettings

Clock = Callable[[], int]
WARMUP_HARD_CAP = 100_000  # runs; the time cap normally ends warmup long before


@dataclass(frozen=True)
class Loop:
    samples_ns: tuple[int, ...]
    elapsed_ns: int
    stable: bool = True  # warmup: windows agreed before the time cap
    aborted: bool = False


def warmup(
    step: Callable[[], object],
    settings: ProtocolSettings,
    clock: Clock = time.perf_counter_ns,
    cancel: threading.Event | None = None,
) -> Loop:
    w = max(settings.warmup_window, 0)
    need = max(settings.warmup_min_runs, 2 * w if w else 0)
    if need == 0:
        return Loop((), 0, True)
    cap_ns = int(settings.warmup_max_s * 1e9)
    tol = settings.warmup_tolerance
    samples: list[int] = []
    start = clock()
    while len(samples) < WARMUP_HARD_CAP:
        t0 = clock()
        step()
        t1 = clock()
        samples.append(t1 - t0)
        n = len(samples)
        if n >= need and (not w or windows_agree(samples[-2 * w : -w], samples[-w:], tol)):
            return Loop(tuple(samples), t1 - start, True)
        if t1 - start >= cap_ns:
            return Loop(tuple(samples), t1 - start, False)
        if cancel is not None and not n & 15 and cancel.is_set():
            return Loop(tuple(samples), t1 - start, False, aborted=True)
    return Loop(tuple(samples), clock() - start, False)


_B1 = HIST_BITS + 1


def with_stop_rule(settings: ProtocolSettings) -> ProtocolSettings:
    """The settings as the loop applies them: the time cap raised to the time floor if below it."""
    if settings.max_time_s >= settings.min_time_s:
        return settings
    return dataclasses.replace(settings, max_time_s=settings.min_time_s)


class SampleKeeper:
    """The timed samples in bounded memory: an int64 array up to ``exact_limit`` runs (512 KiB by
    default), then (:meth:`spill`) a dict histogram of bucket floors (at most 2**HIST_BITS keys per power of
    two between the fastest and the slowest run) plus an ordered subsample of at most ``ordered_limit``
    runs; the exact array is freed. ``add`` is the hot path, rebound by :meth:`spill`."""

    def __init__(self, exact_limit: int = EXACT_LIMIT, ordered_limit: int = ORDERED_LIMIT) -> None:
        self.exact_limit, self.ordered_limit = exact_limit, ordered_limit
        self._exact: array[int] | None = array("q")
        self.add: Callable[[int], None] = self._exact.append
        self._counts: dict[int, int] = {}
        self._ordered: array[int] = array("q")
        self._stride = 1
        self._k = self._total = self._total_sq = 0
        self._min, self._max = 1 << 63, -1

    def spill(self) -> Callable[[int], None]:
        """Fold the exact runs into the histogram; returns the new ``add``."""
        exact, self._exact = self._exact, None
        if exact is None:
            return self.add
        for v in exact:
            self._add_binned(v)
        self.add = self._add_binned
        return self.add

    def _add_binned(self, v: int) -> None:
        self._total += v
        self._total_sq += v * v
        if v < self._min:
            self._min = v
        if v > self._max:
            self._max = v
        shift = v.bit_length() - _B1
        key = v if shift <= 0 else (v >> shift) << shift
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        if not self._k & (self._stride - 1):  # run k is in the subsample when k is a multiple of stride
            self._ordered.append(v)
            if len(self._ordered) > self.ordered_limit:
                self._ordered = self._ordered[::2]
                self._stride *= 2
        self._k += 1

    @property
    def n(self) -> int:
        return len(self._exact) if self._exact is not None else self._k

    def kept(self) -> Kept:
        if self._exact is not None:
            return Kept.of(self._exact)
        sums = Kept(self._k, self._total, self._total_sq, self._min, self._max, ())
        return thin(sums, tuple(sorted(self._counts.items())), self._ordered, self._stride)

    def footprint_bytes(self) -> int:
        """The bytes this keeper holds (arrays and the histogram dict with its int keys and counts)."""
        import sys

        arrays = sum(sys.getsizeof(a) for a in (self._exact, self._ordered) if a is not None)
        ints = sum(sys.getsizeof(k) + sys.getsizeof(c) for k, c in self._counts.items())
        return arrays + sys.getsizeof(self._counts) + ints


@dataclass(frozen=True)
class TimedLoop:
    keeper: SampleKeeper
    elapsed_ns: int
    stop: str  # why the loop ended, in words (the record's options["stop"])
    aborted: bool = False

    @property
    def n(self) -> int:
        return self.keeper.n

    @property
    def samples_ns(self) -> tuple[int, ...]:
        """Every run, while they were kept exactly (the outcome format before :meth:`outcome`)."""
        kept = self.keeper.kept()
        if not kept.exact:
            raise BenchError(
                f"{kept.n} timed runs were kept as a histogram: the worker must send TimedLoop.outcome()"
            )
        return kept.ordered

    def outcome(self) -> dict[str, Any]:
        """The JSON-able part of a worker's outcome for the timed runs."""
        return {
            "timed": self.keeper.kept().to_dict(),
            "stop": self.stop,
            "elapsed_ns": self.elapsed_ns,
            "aborted": self.aborted,
        }


def timed(
    step: Callable[[], object],
    settings: ProtocolSettings,
    clock: Clock = time.perf_counter_ns,
    cancel: threading.Event | None = None,
    keeper: SampleKeeper | None = None,
) -> TimedLoop:
    """The timed runs under the stop rule (module docstring); the body is the hot loop, in one piece."""
    settings = with_stop_rule(settings)
    min_runs, max_runs = max(settings.min_runs, 1), max(settings.max_runs, 0)
    min_ns, cap_ns = int(settings.min_time_s * 1e9), int(settings.max_time_s * 1e9)
    keeper = keeper or SampleKeeper()
    add, spill_at = keeper.add, keeper.exact_limit
    n = 0
    start = clock()
    while True:
        t0 = clock()
        step()
        t1 = clock()
        add(t1 - t0)
        n += 1
        elapsed = t1 - start
        if n >= min_runs and elapsed >= min_ns:
            return TimedLoop(keeper, elapsed, f"min runs and min time: {n} runs in {elapsed / 1e9:.2f} s")
        if elapsed >= cap_ns:
            return TimedLoop(
                keeper, elapsed, f"max time {settings.max_time_s:g} s: {n} of {min_runs} min runs"
            )
        if n == max_runs:
            return TimedLoop(
                keeper, elapsed, f"max runs {n}: {elapsed / 1e9:.2f} s of {settings.min_time_s:g} s min time"
            )
        if n == spill_at:
            add = keeper.spill()
        if cancel is not None and not n & 15 and cancel.is_set():
            return TimedLoop(keeper, elapsed, f"cancelled after {n} runs", aborted=True)
