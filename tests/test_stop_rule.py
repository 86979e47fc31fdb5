"""The stop rule and bounded sample keeping, deterministic (an injected clock; no runtime, no sleeping).

The loop never stops before the time floor because of a run count; past EXACT_LIMIT runs the samples are a
log histogram whose figures stay within HIST_RELATIVE_ERROR of the exact ones, in bounded memory.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.measure.bench import PRESETS, BenchOptions
from agent.measure.protocol import SampleKeeper, timed, with_stop_rule
from agent.measure.records import timed_samples
from agent.measure.stats import (
    EXACT_LIMIT,
    HIST_BITS,
    HIST_RELATIVE_ERROR,
    ORDERED_LIMIT,
    Kept,
    bucket_floor,
    bucket_mid,
    merge_kept,
    summarize,
)
from wire.schema import ProtocolSettings

US = 1_000


class CycleClock:
    """A fake clock whose every step() takes the next of a fixed cycle of durations (ns)."""

    def __init__(self, durations_ns: list[int]) -> None:
        self.t, self.i, self.durations = 0, 0, durations_ns

    def __call__(self) -> int:
        return self.t

    def step(self) -> None:
        self.t += self.durations[self.i % len(self.durations)]
        self.i += 1


def jittered(mean_ns: int, spread: float = 0.5, count: int = 4096, seed: int = 1) -> list[int]:
    rng = random.Random(seed)
    return [int(mean_ns * (1 + spread * rng.random())) for _ in range(count)]


@pytest.mark.parametrize(("preset", "old_cap"), [("quick", 5000), ("default", 10_000)])
def test_a_fast_model_is_timed_for_the_whole_time_floor(preset, old_cap):
    """20-30 us runs: the old hidden caps (5,000 / 10,000 runs) ended them after 0.13 / 0.25 s."""
    p = BenchOptions.preset(preset).protocol
    assert p.max_runs == 0  # no preset caps the run count
    clock = CycleClock(jittered(20 * US))
    loop = timed(clock.step, p, clock)
    assert loop.elapsed_ns >= p.min_time_s * 1e9 and loop.n > old_cap
    assert loop.stop.startswith("min runs and min time:") and not loop.aborted
    kept = loop.keeper.kept()
    assert kept.n == loop.n == clock.i and kept.total_ns == clock.t  # every run counted, exactly
    assert kept.exact == (loop.n <= EXACT_LIMIT)


def test_time_cap_never_below_the_floor():
    assert with_stop_rule(ProtocolSettings(min_time_s=100, max_time_s=60)).max_time_s == 100
    assert BenchOptions.preset("quick").with_protocol(min_time_s=5).protocol.max_time_s == 5
    clock = CycleClock([1_000 * US])  # 1 ms runs, floor 3 s, a cap of 1 s asked for
    loop = timed(clock.step, ProtocolSettings(min_runs=10, min_time_s=3, max_time_s=1), clock)
    assert loop.n == 3000 and loop.elapsed_ns == 3 * 10**9
    slow = CycleClock([2 * 10**9])  # 2 s runs: the cap ends it before min_runs, never before min time
    loop = timed(slow.step, ProtocolSettings(min_runs=100, min_time_s=3, max_time_s=10), slow)
    assert loop.n == 5 and loop.stop == "max time 10 s: 5 of 100 min runs"


def test_an_explicit_run_cap_says_it_cut_the_floor():
    clock = CycleClock([10 * US])
    loop = timed(clock.step, ProtocolSettings(min_runs=10, min_time_s=10, max_runs=1000), clock)
    assert loop.n == 1000 and loop.stop == "max runs 1000: 0.01 s of 10 s min time"


def test_memory_stays_bounded_past_a_million_runs():
    """1.2 million runs of 20-30 us (1 octave: <= 1024 buckets): the keeper holds the histogram and a
    32,768-run subsample, not the runs; its footprint at 1.2M runs is what it was at 150k."""
    clock = CycleClock(jittered(20 * US))
    sizes = {}
    for runs in (150_000, 1_200_000):
        loop = timed(clock.step, ProtocolSettings(min_runs=runs, min_time_s=0, max_time_s=1e9), clock)
        assert loop.n == runs
        keeper = loop.keeper
        kept = keeper.kept()
        assert not kept.exact and len(kept.buckets) <= 1 << HIST_BITS and len(kept.ordered) <= ORDERED_LIMIT
        sizes[runs] = keeper.footprint_bytes()
    assert sizes[1_200_000] < 1_000_000  # bytes
    assert sizes[1_200_000] <= sizes[150_000] * 1.05


def test_keeper_spill_is_the_histogram_of_all_runs():
    values = jittered(3 * US, spread=3.0, count=10_000, seed=5)
    keeper = SampleKeeper(exact_limit=1000)
    for i, v in enumerate(values, 1):
        keeper.add(v)
        if i == keeper.exact_limit:
            keeper.spill()
    assert keeper.kept() == Kept.of(values).binned()
    assert timed_samples({"timed": keeper.kept().to_dict()}) == keeper.kept()  # the worker -> parent trip
    assert timed_samples({"samples_ns": values[:50]}) == Kept.of(values[:50])  # an older worker's list


def test_ordered_subsample_is_every_stride_th_run():
    values = list(range(1, 3 * ORDERED_LIMIT + 1))
    kept = Kept.of(values).binned()
    assert kept.stride == 4 and kept.ordered == tuple(values[::4]) and len(kept.ordered) <= ORDERED_LIMIT


def test_bucket_bounds():
    for v in (1, 2047, 2048, 2049, 4095, 123_456_789, 10**12):
        lo = bucket_floor(v)
        width = 1 if v < 2 ** (HIST_BITS + 1) else 1 << (v.bit_length() - HIST_BITS - 1)
        assert lo <= v < lo + width and width <= max(1, lo * 2.0**-HIST_BITS)
        assert abs(bucket_mid(lo) - v) <= v * HIST_RELATIVE_ERROR


timings = st.one_of(
    st.lists(st.integers(1, 10**10), min_size=1, max_size=400),  # anything, 1 ns to 10 s
    st.lists(st.integers(20 * US, 60 * US), min_size=50, max_size=2000),  # a sub-ms model
    st.builds(  # a heavy tail: a few slow runs among fast ones
        lambda fast, slow: fast + slow,
        st.lists(st.integers(900 * US, 1100 * US), min_size=100, max_size=1500),
        st.lists(st.integers(5_000 * US, 50_000 * US), max_size=30),
    ),
)


@settings(max_examples=150, deadline=None)
@given(timings)
def test_histogram_figures_within_the_stated_resolution_of_exact(values):
    exact = summarize(values, keep_samples=False)
    hist = summarize(Kept.of(values).binned(), keep_samples=False)
    e = HIST_RELATIVE_ERROR * (1 + 1e-12)
    for name in ("p50_ms", "p90_ms", "p99_ms", "p50_ci_low_ms", "p50_ci_high_ms"):
        x, y = getattr(exact, name), getattr(hist, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert abs(y - x) <= e * x + 1e-15, (name, x, y)
    assert abs(hist.mad_ms - exact.mad_ms) <= e * (exact.mad_ms + 2 * exact.p50_ms) + 1e-15
    for name in ("n", "min_ms", "max_ms"):
        assert getattr(hist, name) == getattr(exact, name)
    for name in ("mean_ms", "std_ms", "cv", "throughput_ips"):
        assert getattr(hist, name) == pytest.approx(getattr(exact, name), rel=1e-9, abs=1e-12)


def test_repeats_merge_exact_while_they_fit_then_as_histogram():
    a, b = Kept.of([1000] * 10), Kept.of([2000] * 20)
    merged = merge_kept([a, b])
    assert merged.exact and merged.n == 30 and merged.ordered == (1000,) * 10 + (2000,) * 20
    big = Kept.of(jittered(50 * US, count=EXACT_LIMIT, seed=2))
    merged = merge_kept([big, b])
    assert not merged.exact and merged.n == EXACT_LIMIT + 20 and merged.total_ns == big.total_ns + 40_000
    assert merged.stride == 4 and merged.ordered[-5:] == (2000,) * 5  # 32,778 runs at stride 2: halved
    assert sum(c for _, c in merged.buckets) == merged.n


def test_the_record_says_how_samples_were_kept():
    assert Kept.of([1000] * 5).describe() == "exact: all 5 timed runs"
    text = Kept.of(jittered(50 * US, count=100_000)).binned().describe()
    assert text.startswith("log histogram of 100000 runs, 1024 buckets per power of two")
    assert "within 0.049%" in text and "every 4th run (25000)" in text


def test_presets_keep_their_floors():
    assert [(PRESETS[k].min_runs, PRESETS[k].min_time_s) for k in ("quick", "default", "thorough")] == [
        (20, 0.2),
        (100, 10.0),
        (300, 30.0),
    ]
