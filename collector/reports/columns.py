"""The columns of the matrix, the comparison and the ops report as rows of strings, shared by every
renderer (text, csv, md: :mod:`collector.reports.render`; html: :mod:`collector.reports.html`)."""

from __future__ import annotations

import math

from collector.reports.compare import Comparison
from collector.reports.matrix import Report
from collector.reports.ops import OpsReport
from wire.schema import PERCENTILE_FLOORS, percentile_supported

__all__ = ["compare_columns", "matrix_columns", "num", "ops_columns"]


def num(v: float | None, digits: int = 2) -> str:
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
        "acc drop pt",  # the converter's word and sign: points of accuracy lost vs fp32
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
                num(r.p50_ms, 3),
                f"{num(r.p50_ci_low_ms, 3)}-{num(r.p50_ci_high_ms, 3)}",
                num(r.p90_ms, 3)
                if percentile_supported("p90_ms", r.n)
                else f"n<{PERCENTILE_FLOORS['p90_ms']}",
                "baseline" if r.is_baseline else (f"{r.speedup:.2f}x" if r.speedup else "-"),
                num(r.size_bytes / 1e6 if r.size_bytes is not None else None),
                num(r.peak_mb, 1),
                num(r.energy_j * 1000 if r.energy_j is not None else None, 3),
                r.energy_method or "-",
                num(-r.accuracy_delta if r.accuracy_delta else r.accuracy_delta),
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
        "change",
        "change 95% CI",
        "p",
        "run-to-run",
        "min effect",
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
                num(r.baseline_p50_ms, 3),
                num(r.candidate_p50_ms, 3),
                f"{r.change * 100:+.1f}%" if r.change is not None else "-",
                f"{r.change_ci_low * 100:+.1f}..{r.change_ci_high * 100:+.1f}%"
                if r.change_ci_low is not None and r.change_ci_high is not None
                else "-",
                f"{r.p_value:.3f}" if r.p_value is not None else "-",
                f"{r.run_cv:.1%}" if r.run_cv is not None else "-",
                f"{r.threshold:.1%}" if r.threshold is not None else "-",
                r.verdict,
            ]
        )
    return head, body


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
