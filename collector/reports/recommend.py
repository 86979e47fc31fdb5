"""Which variant to ship on each device: the fp32 baseline of each device x model, speedups against it,
the recommendation (the fastest within the accuracy budget, never one slower than fp32) and its summary.
"""

from __future__ import annotations

from dataclasses import replace

from collector.reports.matrix import MatrixRow, Report
from collector.reports.query import ReportFilter

__all__ = ["BASELINE_NAMES", "decorate", "pick_baseline", "summary_lines"]

BASELINE_NAMES = ("fp32", "onnx-fp32", "source", "original", "reference", "baseline")


def pick_baseline(rows: list[MatrixRow], wanted: str | None) -> MatrixRow | None:
    """The fp32 baseline among one device x model's rows: ``wanted`` (a variant or artifact name) when
    given, else the largest fp32 artifact (preferring a baseline-like name, then ONNX)."""
    if wanted is not None:
        return next((r for r in rows if wanted in (r.variant, r.artifact_name)), None)
    fp32 = [r for r in rows if (r.precision or "").lower() == "fp32"]
    if not fp32:
        return None
    named = [r for r in fp32 if r.variant.lower() in BASELINE_NAMES]
    pool = named or fp32
    # The unoptimised original is the largest fp32 file; prefer ONNX, then the name, for a stable choice.
    return sorted(pool, key=lambda r: (-(r.size_bytes or 0), r.format != "onnx", r.variant))[0]


def decorate(
    rows: list[MatrixRow], f: ReportFilter, max_drop: float | None, notes: list[str]
) -> list[MatrixRow]:
    """The rows with baseline, speedup and accuracy filled in and one recommended row per device x model;
    a device x model without a baseline adds a line to ``notes``."""
    out: list[MatrixRow] = []
    groups: dict[tuple[str, str], list[MatrixRow]] = {}
    for r in rows:
        groups.setdefault((r.device_id, r.model), []).append(r)
    for (device, model), group in sorted(groups.items()):
        base = pick_baseline(group, f.baseline)
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


def why_recommended(r: MatrixRow, *, short: bool = False) -> str:
    """``the fp32 baseline`` / ``1.83x the fp32 baseline`` (short: ``fp32 baseline``, ``1.83x faster than
    fp32``); empty when there is no speedup to tell."""
    if r.is_baseline:
        return "fp32 baseline" if short else "the fp32 baseline"
    if r.speedup:
        return f"{r.speedup:.2f}x faster than fp32" if short else f"{r.speedup:.2f}x the fp32 baseline"
    return ""


def recommendation_lines(report: Report) -> list[str]:
    """One line per device x model: which variant to ship and why."""
    out = []
    for (device, model), r in sorted(report.recommendations().items()):
        why = why_recommended(r)
        out.append(
            f"{device} / {model or '-'}: ship {r.variant} (p50 {r.p50_ms:.3f} ms{', ' + why if why else ''})"
        )
    return out


def budget_line(report: Report) -> str:
    if report.max_accuracy_drop is not None:
        return f"accuracy budget: at most {report.max_accuracy_drop} points lost"
    return "no accuracy budget given (--max-accuracy-drop): accuracy not considered"


def summary_lines(report: Report) -> list[str]:
    """The report's summary: the recommendations, the accuracy budget, then the notes."""
    return [*recommendation_lines(report), budget_line(report), *report.notes]
