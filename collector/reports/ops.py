"""Where the time goes on each device: the per-operator profiles stored with results (``--profile-ops``).

ONNX Runtime's profile gives each node's mean time per inference and its share of the profiled time;
LiteRT's Python API gives no per-op timing, only which ops the XNNPACK delegate took and which stayed
on the default CPU kernels (their share and time are recorded as 0). One :class:`OpsRow` per device x
model x variant x runtime x threads, over every run that carries a profile: the op types ranked by
their mean share across runs (each run's share of an op type is the sum over its nodes), and how many
nodes each provider ran in the latest run.

Profiles live in the stored record JSON (``results.record``); ``results.profile_ops`` (migration 4,
with a partial index on the rows that have one) finds those rows without touching the others, so the
report costs the same on a million results as on a hundred. A database from before migration 4 is read
as it is (nothing migrated), finding the profiled rows by migration 4's own test on the record.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass

from collector.reports.query import ReportFilter, resolve_devices
from collector.reports.source import has_column
from collector.store.report_index import ReportError

__all__ = ["OpTypeShare", "OpsReport", "OpsRow", "ops_report"]


@dataclass(frozen=True)
class OpTypeShare:
    op_type: str
    share: float | None  # mean over runs of the summed share of its nodes; None: the runtime times no op
    mean_ms: float | None  # mean over runs of the summed per-inference time of its nodes
    nodes: int  # nodes of this type in the latest run's profile
    providers: tuple[str, ...]


@dataclass(frozen=True)
class OpsRow:
    device_id: str
    model: str
    variant: str  # the artifact's name when it has no variant (a plain `edgebench bench` run)
    runtime: str
    threads: int
    runs: int  # runs with a profile
    last_at: str  # finished_at of the latest of them
    ops: tuple[OpTypeShare, ...]  # ranked by share (timed runtimes) or by node count (LiteRT)
    providers: tuple[tuple[str, int], ...]  # provider -> nodes in the latest run, most first
    timed: bool  # whether the runtime gave per-op times

    def top(self, n: int) -> tuple[OpTypeShare, ...]:
        return self.ops[:n]


@dataclass(frozen=True)
class OpsReport:
    rows: tuple[OpsRow, ...]
    profiled_runs: int


_PROFILED_V3 = "instr(record, '\"profile\":[{') > 0"


def _where(conn: sqlite3.Connection, f: ReportFilter) -> tuple[str, list[object]]:
    devices = resolve_devices(conn, f)
    # The partial index of migration 4; before it, the test migration 4 fills the column with.
    profiled = "profile_ops > 0" if has_column(conn, "results", "profile_ops") else _PROFILED_V3
    where, params = [profiled, "status = 'ok'"], []
    if f.model is not None:
        where.append("model = ?")
        params.append(f.model)
    if devices:
        where.append(f"device_id IN ({', '.join('?' * len(devices))})")
        params.extend(sorted(devices))
    for column, op, value in (
        ("finished_at", ">=", f.since),
        ("finished_at", "<", f.until),
        ("threads", "=", f.threads),
        ("batch", "=", f.batch),
    ):
        if value is not None:
            where.append(f"{column} {op} ?")
            params.append(value)
    return " AND ".join(where), params


def ops_report(conn: sqlite3.Connection, f: ReportFilter | None = None) -> OpsReport:
    """Every device x variant with a per-operator profile, op types ranked by where the time goes."""
    f = f or ReportFilter(batch=None)
    where, params = _where(conn, f)
    sql = (
        "SELECT device_id, model, COALESCE(NULLIF(variant, ''), artifact_name), runtime, threads, "
        f"finished_at, json_extract(record, '$.profile') FROM results WHERE {where} "
        "ORDER BY finished_at, result_id"
    )
    runs: dict[tuple[str, str, str, str, int], list[tuple[str, list[dict]]]] = defaultdict(list)
    for device, model, variant, runtime, threads, finished, raw in conn.execute(sql, params):
        try:
            profile = json.loads(raw or "[]")
        except ValueError:
            continue  # a record stored by an older, looser writer: skip it rather than fail the report
        if isinstance(profile, list) and profile:
            key = (device, model or "", variant or "", runtime or "", int(threads or 0))
            runs[key].append((finished or "", profile))
    if not runs and f.model is not None:
        known = [r[0] for r in conn.execute("SELECT DISTINCT model FROM results")]
        if f.model not in known:
            raise ReportError(f"unknown model {f.model!r} (known: {', '.join(sorted(known)) or 'none'})")
    rows = [_row(key, found) for key, found in sorted(runs.items())]
    return OpsReport(tuple(rows), sum(len(v) for v in runs.values()))


_Op = tuple[str, float, float, str]  # op type, share, mean ms, provider


def _parse(profile: list[dict]) -> list[_Op]:
    return [
        (
            str(op.get("op_type", "?")),
            float(op.get("share") or 0.0),
            float(op.get("mean_ms") or 0.0),
            str(op.get("provider") or "-"),
        )
        for op in profile
    ]


def _row(key: tuple[str, str, str, str, int], found: list[tuple[str, list[dict]]]) -> OpsRow:
    share_sum: dict[str, float] = defaultdict(float)
    ms_sum: dict[str, float] = defaultdict(float)
    timed_runs = 0
    for _, profile in found:
        ops = _parse(profile)
        if sum(share for _, share, _, _ in ops) <= 0:
            continue  # a runtime that times no op (LiteRT)
        timed_runs += 1
        for op_type, share, ms, _ in ops:
            share_sum[op_type] += share
            ms_sum[op_type] += ms
    last_at, raw_last = found[-1]
    last = _parse(raw_last)
    nodes = Counter(op_type for op_type, _, _, _ in last)
    providers_by_type: dict[str, set[str]] = defaultdict(set)
    for op_type, _, _, provider in last:
        providers_by_type[op_type].add(provider)
    shares = [
        OpTypeShare(
            op_type=t,
            share=share_sum[t] / timed_runs if timed_runs else None,
            mean_ms=ms_sum[t] / timed_runs if timed_runs else None,
            nodes=nodes.get(t, 0),
            providers=tuple(sorted(providers_by_type.get(t, ()))),
        )
        for t in set(nodes) | set(share_sum)
    ]
    shares.sort(key=lambda o: (-(o.share or 0.0), -o.nodes, o.op_type))
    device, model, variant, runtime, threads = key
    return OpsRow(
        device_id=device,
        model=model,
        variant=variant,
        runtime=runtime,
        threads=threads,
        runs=len(found),
        last_at=last_at,
        ops=tuple(shares),
        providers=tuple(Counter(provider for *_, provider in last).most_common()),
        timed=timed_runs > 0,
    )
