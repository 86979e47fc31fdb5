"""What the HTML latency report shows beyond the matrix, read from the database here so that the
renderer (:mod:`collector.reports.html`) only draws objects it is given: the board samples of each
row's latest run (temperature and clock plots) and the per-operator profiles of the same filters."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace

from collector.reports.matrix import MatrixRow, Report
from collector.reports.ops import OpsReport, ops_report
from collector.reports.source import ReportSource, read_snapshot

__all__ = ["BoardSeries", "HtmlExtras", "board_series", "html_extras"]

MAX_DEVICES_PLOTTED = 12

BoardSeries = dict[str, list[tuple[str, list[dict]]]]  # device -> (variant, board samples) per row


@dataclass(frozen=True)
class HtmlExtras:
    board: BoardSeries
    ops: OpsReport | None = None


def board_series(source: ReportSource, rows: Sequence[MatrixRow]) -> BoardSeries:
    """Per device: (variant, board samples) of the latest run of each row, for the temperature/clock plot."""
    out: BoardSeries = {}
    for r in rows:
        result_id = source.latest_ok_result(r.cell_ids[0])
        if result_id is None:
            continue
        raw = source.conn.execute(
            "SELECT json_extract(record, '$.board.samples') FROM results WHERE result_id = ?", (result_id,)
        ).fetchone()
        samples = json.loads(raw[0]) if raw and raw[0] else []
        if samples:
            out.setdefault(r.device_id, []).append((r.variant, samples))
    return out


def plotted_rows(report: Report) -> list[MatrixRow]:
    """The rows of the first :data:`MAX_DEVICES_PLOTTED` devices (the ones the HTML plots)."""
    devices: list[str] = []
    for r in report.rows:
        if r.device_id not in devices:
            devices.append(r.device_id)
    shown = set(devices[:MAX_DEVICES_PLOTTED])
    return [r for r in report.rows if r.device_id in shown]


def html_extras(source: ReportSource, report: Report) -> HtmlExtras:
    """The board series of the plotted rows and the ops report of the report's filters (any batch)."""
    with read_snapshot(source.conn):
        board = board_series(source, plotted_rows(report))
        ops = ops_report(source.conn, replace(report.filters, batch=None))
    return HtmlExtras(board, ops)
