"""The real false-alarm rate of `report compare` (A/A) on a local fleet, and its power for a seeded shift.

    python bench/compare_aa.py                     # 4 pushes of the same 3 artifacts to 2 agents
    python bench/compare_aa.py --pushes 6 --shift 1.1 --min-time 1.0

Real processes throughout (testkit/fault_fleet.py): mosquitto, `edgebench collector serve`, two
`edgebench agent run` (one thread each), `edgebench fleet push` of the same artifacts N times. Every job
is identical work, so every row of `compare job:A,B job:C,D` over disjoint sets of jobs is an A/A row:
any regression or improvement it calls is a false alarm. All splits k vs k (k = 2 .. N/2) are counted;
rows of overlapping splits share runs, so the rate is less precise than its row count suggests.

``--shift 1.1``: each push is followed by one of the same artifacts with 10 % more layers (same names,
so the rows match: a model with extra work), and every k-of-the-base vs k-of-the-shifted split is
compared: the share of rows called a regression is the power at k runs a side. The artifacts are
MatMul + Tanh stacks (batch 1), sized so compute, not per-call overhead, dominates.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from collector.reports.compare import compare_runs  # noqa: E402
from testkit.fault_fleet import Fleet  # noqa: E402

WIDTHS = (128, 256, 384)
FLAGGED = ("regression", "improvement")


def make_stack(path: Path, width: int, layers: int, seed: int = 0) -> Path:
    """x[1, width] -> layers x (MatMul width x width -> Tanh) -> y: work proportional to ``layers``."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes, prev = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / math.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"mm{i}"))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"t{i}"], name=f"tanh{i}"))
        prev = f"t{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"], name="out"))
    graph = helper.make_graph(
        nodes,
        "stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="compare_aa")
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def splits(jobs: list[str], k: int) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Every unordered pair of disjoint k-sets of ``jobs`` (A,B vs C,D once, not again as C,D vs A,B)."""
    out = []
    for left in itertools.combinations(jobs, k):
        rest = [j for j in jobs if j not in left]
        for right in itertools.combinations(rest, k):
            if left < right:
                out.append((left, right))
    return out


def count(conn: sqlite3.Connection, pairs, limit: int, rng: random.Random) -> tuple[int, int, int, int]:
    """(comparisons, rows, rows flagged either way, rows called a regression) over ``pairs``."""
    if len(pairs) > limit:
        pairs = rng.sample(pairs, limit)
    rows = flagged = regressions = 0
    for left, right in pairs:
        cmp = compare_runs(conn, "job:" + ",".join(left), "job:" + ",".join(right))
        tested = [r for r in cmp.rows if r.p_value is not None]
        rows += len(tested)
        flagged += sum(r.verdict in FLAGGED for r in tested)
        regressions += sum(r.verdict == "regression" for r in tested)
    return len(pairs), rows, flagged, regressions


def run_fleet(work: Path, args: argparse.Namespace) -> tuple[Path, list[str], list[str]]:
    """Start the fleet, push N times (interleaved with the shifted artifacts); the database and job ids."""
    layers = args.layers
    base = [make_stack(work / "base" / f"stack_{w}.onnx", w, layers, seed=w) for w in WIDTHS]
    shifted_layers = round(layers * args.shift) if args.shift else None
    shifted = (
        [make_stack(work / "shifted" / f"stack_{w}.onnx", w, shifted_layers, seed=w) for w in WIDTHS]
        if shifted_layers
        else []
    )
    base_jobs: list[str] = []
    shift_jobs: list[str] = []
    with Fleet(work / "fleet", devices=("dev-a", "dev-b"), agent_log_level="warning") as fleet:
        fleet.start_broker()
        fleet.start_collector()
        fleet.start_agents()
        fleet.wait_online()
        for i in range(args.pushes):
            for files, jobs in ((base, base_jobs), (shifted, shift_jobs)):
                if not files:
                    continue
                t0 = time.monotonic()
                job = fleet.push(
                    files, min_runs=args.min_runs, min_time_s=args.min_time, max_time_s=args.max_time
                )
                if not fleet.wait_settled(job, 600):
                    raise RuntimeError(f"job {job} did not settle: {fleet.diagnose(job)}")
                jobs.append(job)
                kind = "base" if files is base else f"shifted ({shifted_layers} layers)"
                print(f"push {i + 1}/{args.pushes} {kind}: job {job[:8]} in {time.monotonic() - t0:.0f} s",
                      file=sys.stderr, flush=True)  # fmt: skip
    return fleet.db, base_jobs, shift_jobs


def run_logs(conn: sqlite3.Connection, jobs: list[str]) -> dict[tuple[str, str], list[float]]:
    """ln(p50) of every run of ``jobs`` by (device, artifact)."""
    marks = ",".join("?" * len(jobs))
    sql = f"SELECT device_id, artifact_name, p50_ms FROM results WHERE status = 'ok' AND job_id IN ({marks})"
    logs: dict[tuple[str, str], list[float]] = defaultdict(list)
    for device, name, p50 in conn.execute(sql, jobs):
        logs[(device, name)].append(math.log(p50))
    return logs


def run_to_run(conn: sqlite3.Connection, jobs: list[str]) -> tuple[float, float]:
    """(median, max) over rows of the SD of ln(run p50) across ``jobs``: the run-to-run variation seen."""
    sds = sorted(
        math.sqrt(sum((v - sum(xs) / len(xs)) ** 2 for v in xs) / (len(xs) - 1))
        for xs in run_logs(conn, jobs).values()
        if len(xs) > 1
    )
    return (sds[len(sds) // 2], sds[-1]) if sds else (math.nan, math.nan)


def measured_shift(conn: sqlite3.Connection, base: list[str], shifted: list[str]) -> list[str]:
    """Per row, the geometric mean of the shifted runs' p50 over the base runs'."""
    b, s = run_logs(conn, base), run_logs(conn, shifted)
    return [
        f"{d} {n}: {math.exp(sum(s[(d, n)]) / len(s[(d, n)]) - sum(v) / len(v)):.3f}x"
        for (d, n), v in sorted(b.items())
        if (d, n) in s
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pushes", type=int, default=4, help="pushes of the same artifacts (N >= 4)")
    parser.add_argument("--shift", type=float, default=None, help="also push artifacts with this much work")
    parser.add_argument("--layers", type=int, default=10, help="MatMul layers of the base artifacts")
    parser.add_argument("--min-runs", type=int, default=50)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timed runs per artifact")
    parser.add_argument("--max-time", type=float, default=2.0)
    parser.add_argument("--limit", type=int, default=300, help="comparisons at most per row of the table")
    parser.add_argument("--db", type=Path, default=None, help="analyse this database (the jobs in it)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if args.pushes < 4:
        parser.error("--pushes must be at least 4 (two runs a side)")
    work = Path(tempfile.mkdtemp(prefix="edgebench-compare-aa-"))
    t0 = time.monotonic()
    try:
        db, base_jobs, shift_jobs = run_fleet(work, args)
        report(db, base_jobs, shift_jobs, args, time.monotonic() - t0)
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _line(label: str, counted: tuple[int, int, int, int]) -> str:
    n, rows, flagged, reg = counted
    return f"| {label} | {n} | {rows} | {flagged} | {flagged / max(rows, 1):.1%} | {reg / max(rows, 1):.1%} |"


def report(
    db: Path, base_jobs: list[str], shift_jobs: list[str], args: argparse.Namespace, secs: float
) -> None:
    """Print the A/A table (and, with shifted jobs, the power table) from the fleet's database."""
    rng = random.Random(0)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        typical, worst = run_to_run(conn, base_jobs)
        print(f"\n{len(base_jobs)} identical pushes x 2 agents x {len(WIDTHS)} artifacts ({secs:.0f} s); "
              f"run-to-run SD of ln(p50): median {typical:.1%}, max {worst:.1%} over the rows")  # fmt: skip
        print("\n| A/A | splits | rows | flagged | false-alarm rate | as regressions |")
        print("|---|---|---|---|---|---|")
        total = (0, 0, 0, 0)
        for group, jobs in (("base", base_jobs), ("shifted", shift_jobs)):
            for k in range(2, len(jobs) // 2 + 1):
                counted = count(conn, splits(jobs, k), args.limit, rng)
                total = tuple(a + b for a, b in zip(total, counted, strict=True))  # type: ignore[assignment]
                print(_line(f"{group} {k} vs {k}", counted))
        print(_line("all", total))
        if not shift_jobs:
            return
        print(
            f"\nseeded shift {args.shift}x; measured: "
            + ", ".join(measured_shift(conn, base_jobs, shift_jobs))
        )
        print("\n| base vs shifted | comparisons | rows | flagged | share | called a regression (power) |")
        print("|---|---|---|---|---|---|")
        for k in range(2, len(base_jobs) + 1):
            pairs = [(a, b) for a in itertools.combinations(base_jobs, k)
                     for b in itertools.combinations(shift_jobs, k)]  # fmt: skip
            print(_line(f"{k} vs {k} runs", count(conn, pairs, args.limit, rng)))
    finally:
        conn.close()


if __name__ == "__main__":
    raise SystemExit(main())
