"""The HTML report: one self-contained file with the plots; renders in headless chromium when present."""

from __future__ import annotations

import re

import pytest

from collector.reports.compare import compare_runs
from collector.reports.extras import html_extras
from collector.reports.latency import latency_report
from collector.reports.render import render_comparison, render_report
from collector.reports.source import ReportSource
from collector.store.sqlite import insert_results, open_db
from testkit.report_records import make_record
from testkit.screenshot import chromium_path, screenshot


@pytest.fixture
def html(db_path):
    db = open_db(db_path)
    recs = [
        make_record(dev, v, base_ms=base, seed=10 * i + k, job_id=None)
        for i, (dev, base) in enumerate((("pi-a", 10.0), ("pi-b", 20.0)))
        for k, v in enumerate(("fp32", "fp16", "int8-static", "tflite-int8"))
    ]
    insert_results(db, recs)
    report = latency_report(db.conn, max_accuracy_drop=1.0)
    return render_report(report, "html", html_extras(ReportSource.read(db.conn), report))


def test_self_contained_with_every_plot(html):
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)=["'](?!data:)""", html), "no external resources"
    assert "<script" not in html
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    # 2 devices x (before/after, distribution, pareto, board) = 8 plots
    assert len(images) == 8 and all(len(i) > 5000 for i in images)
    for title in ("Before vs after", "Latency distribution", "Pareto", "temperature and clock"):
        assert title in html
    assert html.count('class="ship"') == 2


def test_comparison_html(db_path):
    db = open_db(db_path)
    before = [make_record("pi-a", "fp32", seed=s, finished_at=f"2024-05-0{s}T00:00:00Z") for s in (1, 2)]
    after = [
        make_record("pi-a", "fp32", base_ms=12.0, seed=s, finished_at=f"2024-06-0{s}T00:00:00Z")
        for s in (3, 4)
    ]
    insert_results(db, before + after)
    out = render_comparison(compare_runs(db.conn, "..2024-05-15", "2024-05-15.."), "html")
    assert "regression" in out and out.count("data:image/png;base64,") == 1


@pytest.mark.skipif(chromium_path() is None, reason="chromium not installed (apt-get install chromium)")
def test_renders_in_headless_chromium(html, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(html)
    png = screenshot(page, tmp_path / "shot.png", width=1400, height=2000)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1400, 2000)
    assert len(data) > 50_000  # a page of plots, not a blank one
