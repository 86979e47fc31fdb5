"""Render a latency report, a comparison or an ops report as table (text), csv, json or md (html:
collector.reports.html)."""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from collector.reports.compare import Comparison
from collector.reports.latency import Report
from collector.reports.ops import OpsReport

FORMATS = ("table", "csv", "json", "md", "html")


def _num(v: float | None, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def matrix_columns(report: Report) -> tuple[list[str], list[list[str]]]:
    head = [
        "device",
        "model",
        "variant",
        "format",
        "precision",
        "threads",
        "runs",
        "p50 ms",
        "p50 95% CI",
        "p90 ms",
        "speedup",
        "size MB",
        "peak MB",
        "energy mJ/inf",
        "energy method",
        "acc Δ pts",
        "ship",
    ]
    body = []
    for r in report.rows:
        body.append(
            [
                r.device_id,
                r.model,
                r.variant,
                r.format,
                r.precision,
                str(r.threads),
                str(r.runs),
                _num(r.p50_ms, 3),
                f"{_num(r.p50_ci_low_ms, 3)}-{_num(r.p50_ci_high_ms, 3)}",
                _num(r.p90_ms, 3),
                "baseline" if r.is_baseline else (f"{r.speedup:.2f}x" if r.speedup else "-"),
                _num(r.size_bytes / 1e6 if r.size_bytes is not None else None),
                _num(r.peak_mb, 1),
                _num(r.energy_j * 1000 if r.energy_j is not None else None, 3),
                r.energy_method or "-",
                _num(r.accuracy_delta),
                "<- ship" if r.recommended else "",
            ]
        )
    return head, body


def compare_columns(cmp: Comparison) -> tuple[list[str], list[list[str]]]:
    head = [
        "device",
        "model",
        "variant",
        "runtime",
        "threads",
        "runs (base/cand)",
        "base p50 ms",
        "cand p50 ms",
        "diff ms",
        "diff 95% CI",
        "change",
        "verdict",
    ]
    body = []
    for r in cmp.rows:
        body.append(
            [
                r.device_id,
                r.model,
                r.variant,
                r.runtime,
                str(r.threads),
                f"{r.baseline_runs}/{r.candidate_runs}",
                _num(r.baseline_p50_ms, 3),
                _num(r.candidate_p50_ms, 3),
                _num(r.diff_ms, 3),
                f"{_num(r.ci_low_ms, 3)}..{_num(r.ci_high_ms, 3)}" if r.ci_low_ms is not None else "-",
                f"{r.change * 100:+.1f}%" if r.change is not None else "-",
                r.verdict,
            ]
        )
    return head, body


def _text_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=False)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in body]
    return "\n".join(lines)


def _md_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in body]
    return "\n".join(lines)


def _csv(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    w.writerows(body)
    return buf.getvalue()


def _report_dict(report: Report) -> dict[str, Any]:
    rows = []
    for r in report.rows:
        d = asdict(r)
        d.pop("cell_ids")
        rows.append(d)
    return {
        "generated_at": report.generated_at,
        "results_total": report.results_total,
        "filters": asdict(report.filters),
        "max_accuracy_drop": report.max_accuracy_drop,
        "recommendations": {f"{d}/{m}": r.variant for (d, m), r in sorted(report.recommendations().items())},
        "rows": rows,
        "notes": list(report.notes),
    }


def _summary(report: Report) -> list[str]:
    out = []
    for (device, model), r in sorted(report.recommendations().items()):
        why = (
            "the fp32 baseline"
            if r.is_baseline
            else f"{r.speedup:.2f}x the fp32 baseline"
            if r.speedup
            else ""
        )
        out.append(
            f"{device} / {model or '-'}: ship {r.variant} (p50 {r.p50_ms:.3f} ms{', ' + why if why else ''})"
        )
    budget = (
        f"accuracy budget: at most {report.max_accuracy_drop} points lost"
        if report.max_accuracy_drop is not None
        else "no accuracy budget given (--max-accuracy-drop): accuracy not considered"
    )
    return [*out, budget, *report.notes]


def render_report(report: Report, fmt: str, conn: sqlite3.Connection | None = None) -> str:
    """``conn`` lets the HTML include the board temperature/clock plots (read from the stored records)."""
    if fmt == "json":
        return json.dumps(_report_dict(report), indent=2, allow_nan=False, default=str) + "\n"
    if fmt == "html":
        from collector.reports.html import render_html

        return render_html(report, conn)
    head, body = matrix_columns(report)
    if fmt == "csv":
        return _csv(head, body)
    if fmt == "md":
        return _md_table(head, body) + "\n\n" + "\n".join(f"- {line}" for line in _summary(report)) + "\n"
    return _text_table(head, body) + "\n\n" + "\n".join(_summary(report)) + "\n"


def render_comparison(cmp: Comparison, fmt: str) -> str:
    if fmt == "json":
        return (
            json.dumps(
                {
                    "baseline": cmp.baseline,
                    "candidate": cmp.candidate,
                    "min_effect": cmp.min_effect,
                    "rows": [asdict(r) for r in cmp.rows],
                    "notes": list(cmp.notes),
                },
                indent=2,
                allow_nan=False,
            )
            + "\n"
        )
    if fmt == "html":
        from collector.reports.html import render_comparison_html

        return render_comparison_html(cmp)
    head, body = compare_columns(cmp)
    if fmt == "csv":
        return _csv(head, body)
    reg, imp = len(cmp.regressions), sum(r.verdict == "improvement" for r in cmp.rows)
    summary = [
        f"{reg} significant regression(s), {imp} significant improvement(s) "
        f"(95% bootstrap CI of the median difference excludes 0 and |change| >= {cmp.min_effect:.0%})",
        *cmp.notes,
    ]
    if fmt == "md":
        return _md_table(head, body) + "\n\n" + "\n".join(f"- {s}" for s in summary) + "\n"
    return _text_table(head, body) + "\n\n" + "\n".join(summary) + "\n"


def ops_columns(report: OpsReport, top: int = 5) -> tuple[list[str], list[list[str]]]:
    head = ["device", "model", "variant", "runtime", "threads", "runs", "where the time goes", "providers"]
    body = []
    for r in report.rows:
        if r.timed:
            ops = [f"{o.op_type} {o.share * 100:.0f}%" for o in r.top(top) if o.share]  # type: ignore[operator]
            rest = sum(o.share or 0.0 for o in r.ops[top:])
            where = ", ".join(ops) + (f", other {rest * 100:.0f}%" if rest >= 0.005 else "")
        else:  # LiteRT: no per-op time; what matters is which ops the delegate did not take
            undelegated = [o.op_type for o in r.ops if any("delegate" not in p for p in o.providers)]
            delegates = sorted({p for o in r.ops for p in o.providers if "delegate" in p})
            if undelegated:
                where = f"not timed; left on CPU kernels: {', '.join(undelegated)}"
            else:
                where = f"not timed; every op on {', '.join(delegates) or 'one provider'}"
        providers = ", ".join(f"{p} {n}" for p, n in r.providers)
        body.append(
            [r.device_id, r.model or "-", r.variant or "-", r.runtime, str(r.threads or "def"), str(r.runs),
             where, providers]
        )  # fmt: skip
    return head, body


def render_ops(report: OpsReport, fmt: str, top: int = 5) -> str:
    if fmt == "json":
        data = {"profiled_runs": report.profiled_runs, "rows": [asdict(r) for r in report.rows]}
        return json.dumps(data, indent=2, allow_nan=False) + "\n"
    if fmt == "html":
        from collector.reports.html import render_ops_html

        return render_ops_html(report, top)
    if not report.rows:
        return "no result carries a per-operator profile (push or bench with --profile-ops)\n"
    head, body = ops_columns(report, top)
    if fmt == "csv":
        return _csv(head, body)
    if fmt == "md":
        return _md_table(head, body) + "\n"
    return _text_table(head, body) + f"\n\n{report.profiled_runs} profiled run(s)\n"
