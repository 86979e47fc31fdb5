"""Render a latency report, a comparison or an ops report as table (text), csv, json or md (html:
collector.reports.html), from the report objects alone (columns: collector.reports.columns)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from collector.reports.columns import compare_columns, matrix_columns, ops_columns
from collector.reports.compare import Comparison
from collector.reports.matrix import Report
from collector.reports.ops import OpsReport
from collector.reports.recommend import summary_lines

if TYPE_CHECKING:
    from collector.reports.extras import HtmlExtras

FORMATS = ("table", "csv", "json", "md", "html")


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


def render_report(report: Report, fmt: str, extras: HtmlExtras | None = None) -> str:
    """``extras`` (:func:`collector.reports.extras.html_extras`) add the board temperature/clock plots and
    the per-operator section to the HTML; the other formats ignore them."""
    if fmt == "json":
        return json.dumps(_report_dict(report), indent=2, allow_nan=False, default=str) + "\n"
    if fmt == "html":
        from collector.reports.html import render_html

        return render_html(report, extras)
    head, body = matrix_columns(report)
    if fmt == "csv":
        return _csv(head, body)
    summary = summary_lines(report)
    if fmt == "md":
        return _md_table(head, body) + "\n\n" + "\n".join(f"- {line}" for line in summary) + "\n"
    return _text_table(head, body) + "\n\n" + "\n".join(summary) + "\n"


def render_comparison(cmp: Comparison, fmt: str) -> str:
    if fmt == "json":
        return (
            json.dumps(
                {
                    "baseline": cmp.baseline,
                    "candidate": cmp.candidate,
                    "min_effect": cmp.min_effect,
                    "alpha": cmp.alpha,
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
        f"{reg} regression(s), {imp} improvement(s) (Welch test on run medians, p < {cmp.alpha:g}, "
        f"|change| >= max({cmp.min_effect:.0%}, run-to-run variation))",
        *cmp.notes,
    ]
    if fmt == "md":
        return _md_table(head, body) + "\n\n" + "\n".join(f"- {s}" for s in summary) + "\n"
    return _text_table(head, body) + "\n\n" + "\n".join(summary) + "\n"


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
