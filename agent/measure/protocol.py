"""The timing loops, with an injected clock (``clock()`` returns integer nanoseconds).

* :func:`warmup` runs at least ``warmup_min_runs`` and until two consecutive windows of
  ``warmup_window`` runs agree on Q1, median and Q3 within ``warmup_tolerance`` (relative to the median),
  or until ``warmup_max_s``. Warmup values are returned apart and never enter the statistics.
* :func:`timed` runs until at least ``min_runs`` AND at least ``min_time_s``, capped by ``max_runs`` OR
  ``max_time_s``. Only ``step()`` sits between the two clock reads.

``cancel`` (a threading.Event) is checked every 16 runs; an aborted loop returns what it has.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.measure.stats import windows_agree
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


def timed(
    step: Callable[[], object],
    settings: ProtocolSettings,
    clock: Clock = time.perf_counter_ns,
    cancel: threading.Event | None = None,
) -> Loop:
    min_runs, max_runs = max(settings.min_runs, 1), max(settings.max_runs, 1)
    min_ns, max_ns = int(settings.min_time_s * 1e9), int(settings.max_time_s * 1e9)
    samples: list[int] = []
    append = samples.append
    n = 0
    start = clock()
    while True:
        t0 = clock()
        step()
        t1 = clock()
        append(t1 - t0)
        n += 1
        elapsed = t1 - start
        if n >= max_runs or elapsed >= max_ns or (n >= min_runs and elapsed >= min_ns):
            return Loop(tuple(samples), elapsed)
        if cancel is not None and not n & 15 and cancel.is_set():
            return Loop(tuple(samples), elapsed, aborted=True)
