"""The cross-device latency matrix: devices x variants, with a recommendation per device.

Every query is parameterised (filters are values, never SQL). Percentiles are those of the pooled
samples of every matching run (see :mod:`collector.reports.stats`), read from the report index
(:mod:`collector.store.report_index`), so a report over a million results stays fast.

One row per (device, model, variant). When a variant ran with several configurations (thread counts,
runtimes), the row shows the fastest configuration (its threads are in the row); ``threads=`` / ``batch=``
filters pin one. Batch defaults to 1 so rows compare like with like.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from collector.reports.stats import merge_by_group, pooled_stats
from collector.store.report_index import ReportError, refresh_index

__all__ = ["MatrixRow", "Report", "ReportError", "ReportFilter", "latency_report", "parse_since"]

BASELINE_NAMES = ("fp32", "onnx-fp32", "source", "original", "reference", "baseline")


@dataclass(frozen=True)
class ReportFilter:
    model: str | None = None
    devices: tuple[str, ...] = ()
    tag: str | None = None
    since: str | None = None  # ISO timestamp (normalised by parse_since)
    until: str | None = None
    batch: int | None = 1
    threads: int | None = None
    baseline: str | None = None  # variant name that is the fp32 baseline (default: automatic)


@dataclass(frozen=True)
class MatrixRow:
    device_id: str
    model: str
    variant: str
    artifact_name: str
    artifact_sha256: str
    format: str
    precision: str
    runtime: str
    threads: int
    batch: int
    runs: int
    n: int
    p50_ms: float
    p50_ci_low_ms: float
    p50_ci_high_ms: float
    p90_ms: float
    size_bytes: int | None
    peak_mb: float | None
    energy_j: float | None
    energy_method: str | None
    accuracy_delta: float | None
    is_baseline: bool = False
    speedup: float | None = None  # baseline p50 / this p50 (same model, same device)
    recommended: bool = False
    cell_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Report:
    rows: tuple[MatrixRow, ...]
    filters: ReportFilter
    max_accuracy_drop: float | None
    generated_at: str
    results_total: int
    notes: tuple[str, ...] = ()
    hists: dict[tuple[str, str, str], np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def recommendations(self) -> dict[tuple[str, str], MatrixRow]:
        return {(r.device_id, r.model): r for r in self.rows if r.recommended}


# ---------------------------------------------------------------- filters

_REL = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_since(text: str, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> str:
    """``7d``, ``12h``, ``30m`` (before now), or an ISO date / date-time (UTC when no zone is given)."""
    value = text.strip()
    rel = _REL.match(value.lower())
    if rel:
        try:
            return _iso(now() - timedelta(**{_UNITS[rel.group(2)]: float(rel.group(1))}))
        except (OverflowError, ValueError):  # e.g. 9999999d: before year 1
            raise ReportError(f"the time {text!r} is too far back (the calendar starts at year 1)") from None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(
            f"cannot read the time {text!r}: use e.g. 7d, 12h, 2024-05-01 or 2024-05-01T12:00:00Z"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    try:
        return _iso(dt)
    except OverflowError:  # 0001-01-01T00:00+14:00 is before year 1 in UTC
        raise ReportError(f"the time {text!r} is out of range") from None


def _device_tags(conn: sqlite3.Connection) -> dict[str, set[str]]:
    tags: dict[str, set[str]] = {}
    for device_id, raw in conn.execute("SELECT device_id, tags FROM devices"):
        try:
            tags.setdefault(device_id, set()).update(json.loads(raw or "[]"))
        except (ValueError, TypeError):
            tags.setdefault(device_id, set())
    # Devices known only from their results (no status message yet): tags of their latest record.
    latest = conn.execute(
        "SELECT device_id, json_extract(record, '$.device.tags') FROM results "
        "WHERE rowid IN (SELECT MAX(rowid) FROM results GROUP BY device_id)"
    )
    for device_id, raw in latest:
        try:
            tags.setdefault(device_id, set()).update(json.loads(raw or "[]"))
        except (ValueError, TypeError):
            tags.setdefault(device_id, set())
    return tags


def resolve_devices(conn: sqlite3.Connection, f: ReportFilter) -> set[str]:
    """The devices a filter names (``--device``, ``--tag``), checked against the known ones; an empty set
    means every device. Unknown names raise :class:`ReportError` listing what is known."""
    known_tags = _device_tags(conn)
    devices = set(f.devices)
    for d in devices:
        if d not in known_tags:
            known = ", ".join(sorted(known_tags)[:20]) or "none"
            raise ReportError(f"unknown device {d!r} (known: {known})")
    if f.tag is not None:
        tagged = {d for d, tags in known_tags.items() if f.tag in tags}
        if not tagged:
            all_tags = sorted(set().union(*known_tags.values())) if known_tags else []
            raise ReportError(
                f"no device has the tag {f.tag!r} (tags in use: {', '.join(all_tags) or 'none'})"
            )
        devices = (devices & tagged) if devices else tagged
        if not devices:
            raise ReportError(f"none of the devices {', '.join(f.devices)} has the tag {f.tag!r}")
    return devices


def _select_cells(conn: sqlite3.Connection, f: ReportFilter) -> list[tuple[Any, ...]]:
    devices = resolve_devices(conn, f)
    where, params = ["1 = 1"], []
    if f.model is not None:
        models = [r[0] for r in conn.execute("SELECT DISTINCT model FROM report_cells")]
        if f.model not in models:
            raise ReportError(f"unknown model {f.model!r} (known: {', '.join(sorted(models)) or 'none'})")
        where.append("model = ?")
        params.append(f.model)
    if devices:
        where.append(f"device_id IN ({', '.join('?' * len(devices))})")
        params.extend(sorted(devices))
    if f.batch is not None:
        where.append("batch = ?")
        params.append(f.batch)
    if f.threads is not None:
        where.append("threads = ?")
        params.append(f.threads)
    sql = (
        "SELECT cell_id, device_id, model, variant, artifact_name, artifact_sha256, format, precision, "
        f"size_bytes, runtime, threads, batch FROM report_cells WHERE {' AND '.join(where)}"
    )
    return conn.execute(sql, params).fetchall()


# ---------------------------------------------------------------- accuracy from artifacts / manifest


def _artifact_deltas(conn: sqlite3.Connection, manifest: Path | None) -> dict[str, float]:
    deltas: dict[str, float] = {}
    for sha, fidelity in conn.execute("SELECT sha256, fidelity FROM artifacts WHERE fidelity IS NOT NULL"):
        try:
            value = json.loads(fidelity).get("accuracy_delta")
        except (ValueError, AttributeError):
            continue
        if isinstance(value, (int, float)):
            deltas[sha] = float(value)
    if manifest is not None:
        try:
            data = json.loads(Path(manifest).read_text())
            for art in data.get("artifacts", []):
                value = (art.get("fidelity") or {}).get("accuracy_delta")
                if isinstance(value, (int, float)) and isinstance(art.get("sha256"), str):
                    deltas[art["sha256"]] = float(value)
        except (OSError, ValueError, AttributeError) as exc:
            raise ReportError(f"cannot read the manifest {manifest}: {exc}") from None
    return deltas


# ---------------------------------------------------------------- the matrix


def _pick_baseline(rows: list[MatrixRow], wanted: str | None) -> MatrixRow | None:
    if wanted is not None:
        return next((r for r in rows if wanted in (r.variant, r.artifact_name)), None)
    fp32 = [r for r in rows if (r.precision or "").lower() == "fp32"]
    if not fp32:
        return None
    named = [r for r in fp32 if r.variant.lower() in BASELINE_NAMES]
    pool = named or fp32
    # The unoptimised original is the largest fp32 file; prefer ONNX, then the name, for a stable choice.
    return sorted(pool, key=lambda r: (-(r.size_bytes or 0), r.format != "onnx", r.variant))[0]


def _decorate(
    rows: list[MatrixRow], f: ReportFilter, max_drop: float | None, notes: list[str]
) -> list[MatrixRow]:
    from dataclasses import replace

    out: list[MatrixRow] = []
    groups: dict[tuple[str, str], list[MatrixRow]] = {}
    for r in rows:
        groups.setdefault((r.device_id, r.model), []).append(r)
    for (device, model), group in sorted(groups.items()):
        base = _pick_baseline(group, f.baseline)
        if base is None:
            notes.append(f"{device} / {model or '(no model)'}: no fp32 baseline measured, no speedups")
        eligible = []
        for r in group:
            is_base = base is not None and r is base
            delta = r.accuracy_delta if r.accuracy_delta is not None else (0.0 if is_base else None)
            speedup = base.p50_ms / r.p50_ms if base is not None and r.p50_ms > 0 else None
            row = replace(r, is_baseline=is_base, speedup=speedup, accuracy_delta=delta)
            ok_acc = max_drop is None or (delta is not None and delta >= -max_drop)
            not_slower = base is None or is_base or r.p50_ms < base.p50_ms
            if ok_acc and not_slower:
                eligible.append(row)
            out.append(row)
        if eligible:
            best = min(eligible, key=lambda r: r.p50_ms)
            out[out.index(best)] = replace(best, recommended=True)
    return out


def latency_report(
    conn: sqlite3.Connection,
    filters: ReportFilter = ReportFilter(),
    *,
    max_accuracy_drop: float | None = None,
    manifest: Path | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    refresh: bool = True,
) -> Report:
    """Build the matrix. Raises :class:`ReportError` for an empty database or filters matching nothing."""
    if max_accuracy_drop is not None and (math.isnan(max_accuracy_drop) or max_accuracy_drop < 0):
        raise ReportError("--max-accuracy-drop must be a number of points >= 0")
    if refresh:
        refresh_index(conn)
    total = int(conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])
    if total == 0:
        raise ReportError(
            "the database has no results yet: run `edgebench fleet push ...` and let devices report"
        )
    cells = _select_cells(conn, filters)
    if not cells:
        raise ReportError(f"no results match the filters ({_describe(filters)})")
    by_id = {c[0]: c for c in cells}
    all_cells = len(cells) == int(conn.execute("SELECT COUNT(*) FROM report_cells").fetchone()[0])
    aggregates, hists = _gather(conn, None if all_cells else list(by_id), filters.since, filters.until)
    if not aggregates:
        raise ReportError(f"no successful results match the filters ({_describe(filters)})")
    deltas = _artifact_deltas(conn, manifest)

    best: dict[tuple[str, str, str], MatrixRow] = {}
    best_hist: dict[tuple[str, str, str], np.ndarray] = {}
    for i, (cid, runs, n, peak, energy, method, acc, ci_lo, ci_hi) in enumerate(aggregates):
        pooled = pooled_stats(hists[i])
        if pooled is None:
            continue
        c = by_id[cid]
        if runs == 1 and ci_lo is not None and ci_hi is not None:  # the agent's own CI of a single run
            ci_lo, ci_hi = float(ci_lo), float(ci_hi)
        else:
            ci_lo, ci_hi = pooled.p50_ci_low_ms, pooled.p50_ci_high_ms
        variant = c[3] or c[4] or c[5][:12]
        row = MatrixRow(
            device_id=c[1],
            model=c[2] or "",
            variant=variant,
            artifact_name=c[4] or "",
            artifact_sha256=c[5] or "",
            format=c[6] or "",
            precision=c[7] or "",
            runtime=c[9] or "",
            threads=c[10],
            batch=c[11],
            runs=int(runs),
            n=int(n or pooled.n),
            p50_ms=pooled.p50_ms,
            p50_ci_low_ms=ci_lo,
            p50_ci_high_ms=ci_hi,
            p90_ms=pooled.p90_ms,
            size_bytes=c[8],
            peak_mb=peak,
            energy_j=energy,
            energy_method=method,
            accuracy_delta=acc if acc is not None else deltas.get(c[5] or ""),
            cell_ids=(cid,),
        )
        key = (row.device_id, row.model, row.variant)
        if key not in best or row.p50_ms < best[key].p50_ms:
            best[key] = row
            best_hist[key] = hists[i]
    notes: list[str] = []
    rows = _decorate(
        sorted(best.values(), key=lambda r: (r.device_id, r.model, r.p50_ms)),
        filters,
        max_accuracy_drop,
        notes,
    )
    return Report(
        rows=tuple(rows),
        filters=filters,
        max_accuracy_drop=max_accuracy_drop,
        generated_at=_iso(now()),
        results_total=total,
        notes=tuple(notes),
        hists=best_hist,
    )


_DAILY = (
    "SELECT cell_id, runs, n, peak_mb, energy_jn, energy_n, energy_method, acc_sum, acc_count, ci_low_ms, "
    "ci_high_ms, hist FROM report_daily"
)
_RUNS = (
    "SELECT cell_id, 1, n, peak_mb, COALESCE(energy_j * n, 0), "
    "CASE WHEN energy_j IS NOT NULL THEN n ELSE 0 END, energy_method, COALESCE(accuracy_delta, 0), "
    "accuracy_delta IS NOT NULL, p50_ci_low_ms, p50_ci_high_ms, hist "
    "FROM report_runs WHERE status = 'ok' AND hist IS NOT NULL"
)


def _gather(
    conn: sqlite3.Connection, cell_ids: list[int] | None, since: str | None, until: str | None
) -> tuple[list[tuple[Any, ...]], np.ndarray]:
    """Per-cell aggregates and pooled histograms: whole days from the daily rollup, the partial days at
    the ends of a time window from the per-run rows."""
    queries: list[tuple[str, list[Any]]] = []
    cells_sql = f"cell_id IN ({', '.join('?' * len(cell_ids))})" if cell_ids is not None else "1 = 1"
    cells_params: list[Any] = list(cell_ids or [])
    since_day = since[:10] if since else None
    full_from = since_day
    if since and since_day and since[10:] not in ("", "T00:00:00.000Z", "T00:00:00Z"):
        full_from = (datetime.fromisoformat(since_day) + timedelta(days=1)).date().isoformat()
    until_day = until[:10] if until else None
    if since and until and since_day == until_day:
        queries.append((f"{_RUNS} AND {cells_sql} AND finished_at >= ? AND finished_at <= ?",
                        [*cells_params, since, until]))  # fmt: skip
    else:
        day_where, day_params = [cells_sql], list(cells_params)
        if full_from:
            day_where.append("day >= ?")
            day_params.append(full_from)
        if until_day:
            day_where.append("day < ?")
            day_params.append(until_day)
        queries.append((f"{_DAILY} WHERE {' AND '.join(day_where)}", day_params))
        if since and full_from != since_day:
            queries.append((f"{_RUNS} AND {cells_sql} AND finished_at >= ? AND finished_at < ?",
                            [*cells_params, since, full_from]))  # fmt: skip
        if until:
            queries.append((f"{_RUNS} AND {cells_sql} AND finished_at >= ? AND finished_at <= ?",
                            [*cells_params, until_day, until]))  # fmt: skip
    acc: dict[int, list[Any]] = {}
    owners: list[int] = []
    blobs: list[bytes] = []
    for sql, params in queries:
        for cid, runs, n, peak, ejn, en, method, asum, acount, lo, hi, hist in conn.execute(sql, params):
            a = acc.get(cid)
            if a is None:
                a = acc[cid] = [len(acc), 0, 0, None, 0.0, 0, None, 0.0, 0, None, None]
            a[1] += runs
            a[2] += n or 0
            a[3] = peak if a[3] is None else a[3] if peak is None else max(a[3], peak)
            a[4] += ejn or 0.0
            a[5] += en or 0
            a[6] = method or a[6]
            a[7] += asum or 0.0
            a[8] += acount or 0
            a[9] = lo if a[9] is None else a[9] if lo is None else min(a[9], lo)
            a[10] = hi if a[10] is None else a[10] if hi is None else max(a[10], hi)
            owners.append(a[0])
            blobs.append(hist)
    hists = merge_by_group(blobs, np.asarray(owners, dtype=np.int64), len(acc))
    aggregates = [
        (
            cid,
            a[1],
            a[2],
            a[3],
            a[4] / a[5] if a[5] else None,
            a[6],
            a[7] / a[8] if a[8] else None,
            a[9],
            a[10],
        )
        for cid, a in acc.items()
    ]
    return aggregates, hists


def _describe(f: ReportFilter) -> str:
    parts = [
        f"{k}={v!r}"
        for k, v in (
            ("model", f.model),
            ("device", ",".join(f.devices) or None),
            ("tag", f.tag),
            ("since", f.since),
            ("until", f.until),
            ("batch", f.batch),
            ("threads", f.threads),
        )
        if v is not None
    ]
    return ", ".join(parts) or "none"


def board_series(
    conn: sqlite3.Connection, rows: Sequence[MatrixRow]
) -> dict[str, list[tuple[str, list[dict]]]]:
    """Per device: (variant, board samples) of the latest run of each row, for the temperature/clock plot."""
    out: dict[str, list[tuple[str, list[dict]]]] = {}
    for r in rows:
        found = conn.execute(
            "SELECT result_id FROM report_runs WHERE cell_id = ? AND status = 'ok' "
            "ORDER BY finished_at DESC LIMIT 1",
            (r.cell_ids[0],),
        ).fetchone()
        if not found:
            continue
        raw = conn.execute(
            "SELECT json_extract(record, '$.board.samples') FROM results WHERE result_id = ?", (found[0],)
        ).fetchone()
        samples = json.loads(raw[0]) if raw and raw[0] else []
        if samples:
            out.setdefault(r.device_id, []).append((r.variant, samples))
    return out
