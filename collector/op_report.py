"""Where the time goes on each device: the per-operator profiles stored with results (``--profile-ops``).

ONNX Runtime's profile gives each node's mean time per inference and its share of the profiled time;
LiteRT's Python API gives no per-op timing, only which ops the XNNPACK delegate took and which stayed
on the default CPU kernels (their share and time are recorded as 0). One :class:`OpsRow` per device x
model x variant x runtime x threads, over every run that carries a profile: the op types ranked by
their mean share across runs (each run's share of an op type is the sum over its nodes), and how many
nodes each provider ran in the latest run.

Profiles live in the stored record JSON (``results.record``); ``results.profile_ops`` (migration 4,
with a partial index on the rows that have one) finds those rows without touching the others, so the
report costs the same on a million results as on a hundred.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass

from collector.report_index import ReportError
from collector.reports import ReportFilter, resolve_devices

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


def _where(conn: sqlite3.Connection, f: ReportFilter) -> tuple[str, list[object]]:
    devices = resolve_devices(conn, f)
    where, params = ["profile_ops > 0", "status = 'ok'"], []  # the partial index of migration 4
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


def _row(key: tuple[str, str, str, str, int], found: list[tuple[str, list[dict]]]) -> OpsRow:
    share_sum: dict[str, float] = defaultdict(float)
    ms_sum: dict[str, float] = defaultdict(float)
    timed_runs = 0
    for _, profile in found:
        per_type_share: dict[str, float] = defaultdict(float)
        per_type_ms: dict[str, float] = defaultdict(float)
        for op in profile:
            per_type_share[str(op.get("op_type", "?"))] += float(op.get("share") or 0.0)
            per_type_ms[str(op.get("op_type", "?"))] += float(op.get("mean_ms") or 0.0)
        if sum(per_type_share.values()) > 0:
            timed_runs += 1
            for t, v in per_type_share.items():
                share_sum[t] += v
            for t, v in per_type_ms.items():
                ms_sum[t] += v
    last_at, last = found[-1]
    nodes = Counter(str(op.get("op_type", "?")) for op in last)
    providers_by_type: dict[str, set[str]] = defaultdict(set)
    for op in last:
        providers_by_type[str(op.get("op_type", "?"))].add(str(op.get("provider") or "-"))
    types = set(nodes) | set(share_sum)
    ops = [
        OpTypeShare(
            op_type=t,
            share=share_sum[t] / timed_runs if timed_runs else None,
            mean_ms=ms_sum[t] / timed_runs if timed_runs else None,
            nodes=nodes.get(t, 0),
            providers=tuple(sorted(providers_by_type.get(t, ()))),
        )
        for t in types
    ]
    ops.sort(key=lambda o: (-(o.share or 0.0), -o.nodes, o.op_type))
    providers = Counter(str(op.get("provider") or "-") for op in last).most_common()
    device, model, variant, runtime, threads = key
    return OpsRow(
        device_id=device,
        model=model,
        variant=variant,
        runtime=runtime,
        threads=threads,
        runs=len(found),
        last_at=last_at,
        ops=tuple(ops),
        providers=tuple(providers),
        timed=timed_runs > 0,
    )
