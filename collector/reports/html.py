"""One self-contained HTML file (inline base64 PNGs from matplotlib, inline CSS, no scripts, no links).

Drawn from the report objects it is given and nothing else: the :class:`~collector.reports.matrix.Report`
and, for the board and per-operator sections, :class:`~collector.reports.extras.HtmlExtras` (read from
the database by :func:`collector.reports.extras.html_extras`).
"""

from __future__ import annotations

import base64
import html
import io
import sqlite3
import warnings
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from collector.reports.columns import compare_columns, matrix_columns, ops_columns
from collector.reports.compare import Comparison
from collector.reports.extras import MAX_DEVICES_PLOTTED, HtmlExtras, html_extras
from collector.reports.matrix import MatrixRow, Report
from collector.reports.ops import OpsReport, OpsRow
from collector.reports.recommend import budget_line, why_recommended
from collector.reports.source import ReportSource
from collector.reports.stats import box_stats

_MPL = tuple(int(x) for x in matplotlib.__version__.split(".")[:2])
BASE, SHIP, OTHER = "#9aa5b1", "#2e9d5b", "#3b6fb6"

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1320px;
color:#1f2933;background:#fafbfc}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:20px;margin:32px 0 8px;border-bottom:2px solid #e4e7eb;padding-bottom:4px}
.meta{color:#616e7c;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{background:#fff;border:1px solid #e4e7eb;border-left:5px solid #2e9d5b;border-radius:6px;
padding:10px 14px;min-width:220px}
.card b{font-size:17px}
.card .dev{color:#616e7c;font-size:13px}
table{border-collapse:collapse;font-size:12.5px;background:#fff;width:100%}
th,td{border:1px solid #e4e7eb;padding:4px 7px;text-align:right;white-space:nowrap}
th{background:#f0f4f8;position:sticky;top:0}
td.l,th.l{text-align:left}
tr.ship td{background:#e3f9e5;font-weight:600}
tr.base td{color:#52606d}
.reg{color:#c62828;font-weight:600}
.imp{color:#2e7d32;font-weight:600}
img{max-width:100%;background:#fff;border:1px solid #e4e7eb;border-radius:6px;margin:6px 0}
.note{color:#7b8794;font-size:13px}
.tablewrap{overflow-x:auto}
"""


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _by_device(rows: Sequence[MatrixRow]) -> dict[str, list[MatrixRow]]:
    out: dict[str, list[MatrixRow]] = {}
    for r in rows:
        out.setdefault(r.device_id, []).append(r)
    return dict(list(out.items())[:MAX_DEVICES_PLOTTED])


def _color(r: MatrixRow) -> str:
    return SHIP if r.recommended else BASE if r.is_baseline else OTHER


def _label(r: MatrixRow, rows: Sequence[MatrixRow] = ()) -> str:
    several_models = len({x.model for x in rows}) > 1
    return f"{r.model} · {r.variant}" if several_models else r.variant


def before_after(device: str, rows: list[MatrixRow]) -> str:
    """fp32 vs each variant: size, p50 latency, peak memory, accuracy delta, side by side."""
    rows = sorted(rows, key=lambda r: (not r.is_baseline, r.p50_ms))
    base = next((r for r in rows if r.is_baseline), None)
    metrics = [
        ("size (MB)", [r.size_bytes / 1e6 if r.size_bytes else np.nan for r in rows]),
        ("p50 latency (ms)", [r.p50_ms for r in rows]),
        ("peak memory (MB)", [r.peak_mb if r.peak_mb is not None else np.nan for r in rows]),
        (
            "accuracy drop (points lost vs fp32)",
            [-r.accuracy_delta if r.accuracy_delta is not None else np.nan for r in rows],
        ),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(15, 0.45 * len(rows) + 1.4), sharey=True)
    labels = [_label(r, rows) for r in rows]
    y = np.arange(len(rows))
    for ax, (title, values) in zip(axes, metrics, strict=False):
        vals = np.array(values, dtype=float)
        ax.barh(y, np.nan_to_num(vals), color=[_color(r) for r in rows], height=0.65)
        ax.set_title(title, fontsize=11)
        ax.grid(axis="x", alpha=0.3)
        ref = vals[0] if base is not None else np.nan
        for i, v in enumerate(vals):
            if np.isnan(v):
                ax.text(0, i, " n/a", va="center", fontsize=8, color="#7b8794")
                continue
            rel = ""
            if "accuracy" not in title and not np.isnan(ref) and ref > 0 and i > 0:
                rel = f"  ({(v / ref - 1) * 100:+.0f}%)"
            ax.text(v, i, f" {v:.3g}{rel} ", va="center", fontsize=8, ha="right" if v < 0 else "left")
        if "accuracy" in title:
            ax.axvline(0, color="#52606d", lw=0.8)
        ax.margins(x=0.35)
    axes[0].set_yticks(y, labels, fontsize=9)
    axes[0].invert_yaxis()  # shared y: once flips all four, fp32 on top
    fig.suptitle(
        f"{device}: fp32 baseline (grey) vs variants; green = ship", fontsize=12, x=0.01, y=1.02, ha="left"
    )
    return _png(fig)


def distributions(report: Report, device: str, rows: list[MatrixRow]) -> str:
    rows = sorted(rows, key=lambda r: r.p50_ms)
    stats = []
    for r in rows:
        h = report.hists.get((r.device_id, r.model, r.variant))
        if h is None:
            continue
        stats.append({**box_stats(h), "label": _label(r, rows), "fliers": []})
    if not stats:
        return ""
    fig, ax = plt.subplots(figsize=(7, 0.42 * len(stats) + 1.3))
    orient = {"orientation": "horizontal"} if _MPL >= (3, 10) else {"vert": False}
    parts = ax.bxp(
        stats,
        showfliers=False,
        patch_artist=True,
        widths=0.6,
        medianprops={"color": "#1f2933", "linewidth": 1.5},
        **orient,
    )
    for patch, r in zip(parts["boxes"], rows, strict=False):
        patch.set_facecolor(_color(r))
        patch.set_alpha(0.9)
    lo, hi = min(s["whislo"] for s in stats), max(s["whishi"] for s in stats)
    if hi / max(lo, 1e-9) > 8:
        ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("latency per inference (ms); box p25-p75, whiskers p5-p95, all runs pooled")
    ax.set_title(device, fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def pareto(device: str, rows: list[MatrixRow]) -> str:
    pts = [(r.size_bytes / 1e6, r.p50_ms, r) for r in rows if r.size_bytes]
    if not pts:
        return ""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for k, (size, p50, r) in enumerate(sorted(pts, key=lambda p: (p[0], p[1]))):
        ax.scatter(
            size,
            p50,
            s=160 if r.recommended else 60,
            color=_color(r),
            marker="*" if r.recommended else "o",
            zorder=3,
            edgecolor="#1f2933",
            linewidth=0.5,
        )
        ax.annotate(
            r.variant, (size, p50), textcoords="offset points", xytext=(7, 5 if k % 2 else -11), fontsize=8
        )
    front, best = [], float("inf")
    for size, p50, _ in sorted(pts, key=lambda p: (p[0], p[1])):
        if p50 < best:
            front.append((size, p50))
            best = p50
    if len(front) > 1:
        ax.step(*zip(*front, strict=False), where="post", color=SHIP, alpha=0.6, lw=1.5, label="Pareto front")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_xlabel("artifact size (MB)")
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title(f"{device}: size vs latency (lower left is better)", fontsize=11)
    ax.grid(alpha=0.3)
    ax.margins(0.15)
    return _png(fig)


def board_plot(device: str, series: list[tuple[str, list[dict]]]) -> str:
    fig, (t_ax, f_ax) = plt.subplots(1, 2, figsize=(12, 3.4))
    drawn = False
    for variant, samples in series:
        t = [s.get("t_s") for s in samples]
        for ax, key in ((t_ax, "temp_c"), (f_ax, "freq_mhz")):
            pairs = [
                (a, s.get(key))
                for a, s in zip(t, samples, strict=False)
                if a is not None and s.get(key) is not None
            ]
            if pairs:
                ax.plot(*zip(*pairs, strict=False), marker=".", lw=1.2, label=variant)
                drawn = True
    if not drawn:
        plt.close(fig)
        return ""
    t_ax.set_title(f"{device}: SoC temperature (°C) during the latest run", fontsize=11)
    f_ax.set_title(f"{device}: CPU clock (MHz) during the latest run", fontsize=11)
    for ax in (t_ax, f_ax):
        ax.set_xlabel("seconds since timed runs started")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    return _png(fig)


def _table(head: list[str], body: list[list[str]], classes: list[str]) -> str:
    left = {"device", "model", "variant", "format", "precision", "energy method", "verdict", "runtime"}
    left |= {"where the time goes", "providers"}
    th = "".join(f'<th class="{"l" if h in left else ""}">{html.escape(h)}</th>' for h in head)
    trs = []
    for row, cls in zip(body, classes, strict=False):
        tds = "".join(
            f'<td class="{"l" if h in left else ""}">{html.escape(c)}</td>'
            for h, c in zip(head, row, strict=False)
        )
        trs.append(f'<tr class="{cls}">{tds}</tr>')
    rows = "".join(trs)
    return f'<div class="tablewrap"><table><thead><tr>{th}</tr></thead><tbody>{rows}</tbody></table></div>'


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>{body}</body></html>\n"
    )


def render_html(report: Report, extras: HtmlExtras | sqlite3.Connection | None = None) -> str:
    """The latency report page; with ``extras``, the board and per-operator sections too.

    A connection in place of ``extras`` is read with :func:`collector.reports.extras.html_extras` (a
    DeprecationWarning: kept for one release for callers of the old signature).
    """
    if isinstance(extras, sqlite3.Connection):
        warnings.warn(
            "render_html(report, conn) is deprecated: pass html_extras(ReportSource.read(conn), report)",
            DeprecationWarning,
            stacklevel=2,
        )
        extras = html_extras(ReportSource.read(extras), report)
    head, body = matrix_columns(report)
    classes = ["ship" if r.recommended else "base" if r.is_baseline else "" for r in report.rows]
    cards = []
    for (device, model), r in sorted(report.recommendations().items()):
        why = why_recommended(r, short=True)
        cards.append(
            f'<div class="card"><div class="dev">{html.escape(device)} · {html.escape(model or "-")}</div>'
            f"<b>{html.escape(r.variant)}</b><div>{r.p50_ms:.3f} ms p50 · {html.escape(why)}</div></div>"
        )
    devices = _by_device(report.rows)
    parts = [
        "<h1>edgebench: which variant to ship where</h1>",
        f'<div class="meta">generated {html.escape(report.generated_at)} · {report.results_total:,} results '
        "in the "
        f"database · {len(report.rows)} device x variant rows</div>",
        f'<div class="cards">{"".join(cards)}</div>',
        "<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in (budget_line(report), *report.notes)),
        "</ul>",
        "<h2>Before vs after: fp32 vs each variant</h2>",
        *(before_after(d, rows) for d, rows in devices.items()),
        "<h2>Latency distribution per device and variant</h2>",
        *(distributions(report, d, rows) for d, rows in devices.items()),
        "<h2>Size vs latency (Pareto) per device</h2>",
        *(pareto(d, rows) for d, rows in devices.items()),
    ]
    if extras is not None:
        plots = [p for p in (board_plot(d, s) for d, s in extras.board.items()) if p]
        parts.append("<h2>Board temperature and clock over the run</h2>")
        parts += plots or ['<p class="note">no board samples recorded</p>']
        if extras.ops is not None:
            parts += ops_section(extras.ops)
    parts += ["<h2>All figures</h2>", _table(head, body, classes)]
    if len(set(r.device_id for r in report.rows)) > MAX_DEVICES_PLOTTED:
        parts.append(
            f'<p class="note">plots show the first {MAX_DEVICES_PLOTTED} devices; the table has all.</p>'
        )
    return _page("edgebench report", "\n".join(parts))


def render_comparison_html(cmp: Comparison) -> str:
    head, body = compare_columns(cmp)
    classes = [
        "reg" if r.verdict == "regression" else "imp" if r.verdict == "improvement" else "" for r in cmp.rows
    ]
    rows = [r for r in cmp.rows if r.change is not None][:40]
    plot = ""
    if rows:
        fig, ax = plt.subplots(figsize=(9, 0.38 * len(rows) + 1.4))
        y = np.arange(len(rows))
        mid = [r.change * 100 for r in rows]
        lo = [(r.ci_low_ms or 0) / r.baseline_p50_ms * 100 for r in rows]
        hi = [(r.ci_high_ms or 0) / r.baseline_p50_ms * 100 for r in rows]
        colors = [
            "#c62828" if r.verdict == "regression" else "#2e7d32" if r.verdict == "improvement" else BASE
            for r in rows
        ]
        ax.hlines(y, lo, hi, color=colors, lw=3, alpha=0.6)
        ax.scatter(mid, y, color=colors, zorder=3)
        ax.axvline(0, color="#52606d", lw=0.8)
        ax.set_yticks(y, [f"{r.device_id} · {r.variant} · {r.threads}t" for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(
            "candidate vs baseline median latency (%, 95% CI, Welch on run medians); right = slower"
        )
        ax.grid(axis="x", alpha=0.3)
        plot = _png(fig)
    text = (
        f"<h1>edgebench compare</h1><div class='meta'>baseline {html.escape(cmp.baseline)} · candidate "
        f"{html.escape(cmp.candidate)}</div>{plot}{_table(head, body, classes)}"
    )
    return _page("edgebench compare", text)


def _op_colors(rows: Sequence[OpsRow], top: int) -> dict[str, tuple[float, ...]]:
    """One color per op type for the whole report (the same op looks the same on every device)."""
    types: list[str] = []
    for r in rows:  # op types in some timed row's top, in order of first appearance
        for o in r.top(top):
            if r.timed and o.op_type not in types:
                types.append(o.op_type)
    palette = plt.get_cmap("tab20").colors
    return {t: palette[i % len(palette)] for i, t in enumerate(types)}


def ops_plot(device: str, rows: list[OpsRow], top: int, colors: dict[str, tuple[float, ...]]) -> str:
    """Stacked bars per variant: the share of the profiled time each op type took (timed runtimes)."""
    rows = [r for r in rows if r.timed]
    if not rows:
        return ""
    types = [t for t in colors if any(o.op_type == t for r in rows for o in r.top(top))]
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(rows) + 1.5))
    labels = [f"{r.variant} · {r.runtime} · {r.threads or 'def'}t" for r in rows]
    left = np.zeros(len(rows))
    for t in types:
        share = np.array([next((o.share or 0.0 for o in r.top(top) if o.op_type == t), 0.0) for r in rows])
        ax.barh(labels, share * 100, left=left, color=colors.get(t, BASE), label=t, edgecolor="white")
        left += share * 100
    other = np.array([max(0.0, 100 - x) for x in left])
    ax.barh(labels, other, left=left, color="#e4e7eb", label="other", edgecolor="white")
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of the profiled time (%), mean over runs")
    ax.set_title(f"{device}: where the time goes (ONNX Runtime profile)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(fig)


def ops_section(report: OpsReport, top: int = 6) -> list[str]:
    if not report.rows:
        return []
    by_device: dict[str, list[OpsRow]] = {}
    for r in report.rows:
        by_device.setdefault(r.device_id, []).append(r)
    colors = _op_colors(report.rows, top)
    shown = list(by_device.items())[:MAX_DEVICES_PLOTTED]
    plots = [p for p in (ops_plot(d, rows, top, colors) for d, rows in shown) if p]
    head, body = ops_columns(report, top)
    return [
        "<h2>Where the time goes (per-operator profiles)</h2>",
        *plots,
        _table(head, body, [""] * len(body)),
        '<p class="note">ONNX Runtime times every node; LiteRT only says which ops the XNNPACK delegate '
        "took and which stayed on the default CPU kernels.</p>",
    ]


def render_ops_html(report: OpsReport, top: int = 6) -> str:
    body = ops_section(report, top) or [
        '<p class="note">no result carries a per-operator profile (push or bench with --profile-ops)</p>'
    ]
    return _page("edgebench ops", "<h1>edgebench: where the time goes</h1>" + "\n".join(body))
