"""Statistics and the timing loops with a fake clock: every figure exact."""

from __future__ import annotations

import threading

import pytest

from agent.measure.protocol import timed, warmup
from agent.measure.stats import (
    claimable,
    count_outliers,
    drift_pct,
    mad,
    median_ci,
    median_ci_ranks,
    percentile,
    summarize,
    verdict,
    windows_agree,
)
from wire.schema import ProtocolSettings

MS = 1_000_000


class FakeClock:
    """Nanoseconds that move only when a fake inference runs: step() advances by the next duration."""

    def __init__(self, durations_ns):
        self.t = 0
        self.durations = list(durations_ns)
        self.i = 0

    def __call__(self) -> int:
        return self.t

    def step(self) -> None:
        self.t += self.durations[min(self.i, len(self.durations) - 1)]
        self.i += 1


def test_percentile_matches_linear_interpolation():
    values = [float(v) for v in range(1, 11)]
    assert percentile(values, 0.5) == 5.5
    assert percentile(values, 0.9) == pytest.approx(9.1)
    assert percentile(values, 0.0) == 1.0 and percentile(values, 1.0) == 10.0
    assert percentile([7.0], 0.99) == 7.0


def test_median_ci_by_order_statistics():
    assert median_ci_ranks(5) is None
    assert median_ci_ranks(100) == (40, 61)  # floor(50 - 9.8), ceil(51 + 9.8)
    assert median_ci_ranks(20) == (5, 16)
    values = [float(v) for v in range(1, 101)]
    assert median_ci(values) == (40.0, 61.0)


def test_high_percentiles_only_claimed_from_their_floors():
    """MLPerf's floors (wire.schema.PERCENTILE_FLOORS): p90 from 64 samples, p99 from 662."""
    assert not claimable(63, 0.9) and claimable(64, 0.9)
    assert not claimable(661, 0.99) and claimable(662, 0.99)
    assert not claimable(9, 0.95) and claimable(20, 0.95)  # other q: a sample above it
    s = summarize([MS] * 63)
    assert s.p90_ms is None and s.p99_ms is None
    s = summarize([MS] * 64)
    assert s.p90_ms == 1.0 and s.p99_ms is None
    s = summarize([MS] * 662)
    assert s.p99_ms == 1.0


def test_summarize_exact_figures():
    # 1..20 ms, then one 100 ms outlier
    samples = [k * MS for k in range(1, 21)] + [100 * MS]
    s = summarize(samples, items_per_run=4, warmup_runs=7, keep_samples=False)
    assert s.n == 21
    assert s.min_ms == 1.0 and s.max_ms == 100.0
    assert s.p50_ms == 11.0
    assert s.mean_ms == pytest.approx((210 + 100) / 21)
    assert (s.p50_ci_low_ms, s.p50_ci_high_ms) == (6.0, 16.0)  # ranks floor(10.5-4.49)=6, ceil(11.5+4.49)=16
    assert s.p90_ms is None  # 21 < 64 samples
    assert s.mad_ms == 5.0
    assert s.outliers == 1  # 100 ms is beyond Q3 + 3 IQR (16 + 30); counted, kept
    assert s.throughput_ips == pytest.approx(4 * 21 / 0.310)
    assert s.warmup_runs == 7 and s.samples_ms is None
    assert not s.stable and s.verdict.startswith("unstable: CV")


def test_drift_and_mad_and_outliers():
    assert drift_pct([1.0] * 8) is None
    assert drift_pct([10.0] * 3 + [11.0] * 3 + [12.0] * 3) == pytest.approx(20.0)
    assert mad([1.0, 2.0, 3.0, 4.0, 100.0]) == 1.0
    assert count_outliers(sorted([1.0, 1.0, 1.0, 1.0, 2.0])) == 1


def test_verdict_reasons():
    assert verdict(0.01, 1.0) == (True, "stable")
    stable, text = verdict(0.07, 1.0)
    assert not stable and "CV 7.0% > 5%" in text
    stable, text = verdict(0.01, 0.0, throttled=True)
    assert not stable and "board throttled" in text
    stable, text = verdict(0.01, 12.5)
    assert not stable and "drift +12.5%" in text
    stable, text = verdict(0.01, None, repeat_spread=0.08)
    assert not stable and "repeat medians differ by 8.0%" in text
    assert verdict(0.01, None, warmup_stable=False)[1].startswith("stable (warmup hit its time cap")


def test_windows_agree_on_quartiles():
    assert windows_agree([10.0] * 5, [10.4] * 5, 0.05)
    assert not windows_agree([10.0] * 5, [10.6] * 5, 0.05)
    assert not windows_agree([10, 10, 10, 10, 10], [10, 10, 10, 12, 12], 0.05)  # Q3 moved


def test_warmup_until_windows_agree():
    # first runs slow (cold caches), then steady at 2 ms
    clock = FakeClock([50 * MS, 30 * MS, 20 * MS, 10 * MS] + [2 * MS] * 100)
    settings = ProtocolSettings(warmup_min_runs=5, warmup_window=4, warmup_tolerance=0.05, warmup_max_s=10)
    loop = warmup(clock.step, settings, clock)
    # windows [4..7] and [8..11] (0-based) are the first two steady windows that agree
    assert loop.stable and len(loop.samples_ns) == 12
    assert loop.samples_ns[:4] == (50 * MS, 30 * MS, 20 * MS, 10 * MS)


def test_warmup_time_cap():
    clock = FakeClock([(1000 - 100 * k) * MS for k in range(9)])  # keeps getting faster: never agrees
    settings = ProtocolSettings(warmup_min_runs=2, warmup_window=2, warmup_tolerance=0.01, warmup_max_s=3.0)
    loop = warmup(clock.step, settings, clock)
    assert not loop.stable
    assert len(loop.samples_ns) == 4 and loop.elapsed_ns == 3400 * MS  # 1000+900+800+700 ms >= 3 s


def test_timed_runs_need_min_runs_and_min_time():
    settings = ProtocolSettings(min_runs=20, min_time_s=0.2, max_time_s=60)
    clock = FakeClock([1 * MS])
    loop = timed(clock.step, settings, clock)
    assert len(loop.samples_ns) == 200 and loop.n == 200  # 0.2 s of 1 ms runs
    assert loop.stop == "min runs and min time: 200 runs in 0.20 s"
    clock = FakeClock([50 * MS])
    loop = timed(clock.step, settings, clock)
    assert loop.n == 20 and loop.elapsed_ns == 1000 * MS  # 20 runs take 1 s


def test_timed_runs_capped():
    clock = FakeClock([1000 * MS])
    settings = ProtocolSettings(min_runs=100, min_time_s=4, max_time_s=5)
    loop = timed(clock.step, settings, clock)
    assert loop.n == 5 and loop.stop == "max time 5 s: 5 of 100 min runs"
    clock = FakeClock([1 * MS])
    settings = ProtocolSettings(min_runs=100, min_time_s=100, max_runs=300, max_time_s=1000)
    loop = timed(clock.step, settings, clock)
    assert loop.n == 300 and loop.stop == "max runs 300: 0.30 s of 100 s min time"


def test_timed_runs_cancel():
    cancel = threading.Event()
    clock = FakeClock([1 * MS])
    calls = []

    def step():
        clock.step()
        calls.append(1)
        if len(calls) == 40:
            cancel.set()

    loop = timed(step, ProtocolSettings(min_runs=1000, min_time_s=100), clock, cancel)
    assert loop.aborted and loop.n == 48  # checked every 16 runs
