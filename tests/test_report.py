"""The latency matrix over real SQLite files: pooled percentiles, baselines, recommendations, bad input."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from collector.reports.latency import ReportFilter, latency_report, parse_since
from collector.reports.stats import pooled_stats, quantile
from collector.store.histograms import encode_hist, merge_by_group
from collector.store.report_index import ReportError, refresh_index
from collector.store.sqlite import insert_results, open_db, register_artifact
from testkit.report_records import make_record, sha
from wire.schema import ArtifactInfo, LatencyStats


def _fleet(db, devices=(("pi-a", 10.0, ("lab",)), ("pi-b", 25.0, ("field",))), runs=2, **kw):
    recs, seed = [], 0
    for dev, base, tags in devices:
        for v in ("fp32", "fp16", "int8-static", "int8-dynamic", "tflite-int8"):
            for _ in range(runs):
                seed += 1
                recs.append(make_record(dev, v, base_ms=base, seed=seed, tags=tags, **kw))
    insert_results(db, recs)
    return recs


def _row(report, device, variant):
    return next(r for r in report.rows if r.device_id == device and r.variant == variant)


def test_histogram_percentiles_match_exact_within_half_a_percent():
    rng = np.random.default_rng(1)
    values = rng.lognormal(2.0, 0.4, 5000)
    blob = encode_hist(values)
    hist = merge_by_group([blob], np.array([0]), 1)[0]
    for q in (0.1, 0.5, 0.9, 0.99):
        assert quantile(hist, q) == pytest.approx(np.quantile(values, q), rel=0.006)
    assert pooled_stats(hist).n == 5000


def test_pooled_median_is_not_the_average_of_run_medians(db_path):
    db = open_db(db_path)
    fast = make_record("pi-a", "fp32", base_ms=10.0, n=100, seed=1)
    slow = make_record("pi-a", "fp32", base_ms=20.0, n=300, seed=2)
    insert_results(db, [fast, slow])
    report = latency_report(db.conn)
    pooled = np.concatenate([fast.latency.samples_ms, slow.latency.samples_ms])
    row = report.rows[0]
    assert row.runs == 2 and row.n == 400
    assert row.p50_ms == pytest.approx(np.median(pooled), rel=0.006)
    assert row.p90_ms == pytest.approx(np.quantile(pooled, 0.9), rel=0.006)
    average_of_medians = (fast.latency.p50_ms + slow.latency.p50_ms) / 2
    assert abs(row.p50_ms - average_of_medians) > 3.0  # ~20 ms pooled vs ~15 ms averaged
    assert row.p50_ci_low_ms < row.p50_ms < row.p50_ci_high_ms


def test_runs_without_raw_samples_use_their_recorded_quantiles(db_path):
    db = open_db(db_path)
    rec = make_record("pi-a", "fp32", base_ms=10.0, n=500, seed=3, keep_samples=False)
    insert_results(db, [rec])
    row = latency_report(db.conn).rows[0]
    assert row.p50_ms == pytest.approx(rec.latency.p50_ms, rel=0.01)
    assert row.p90_ms == pytest.approx(rec.latency.p90_ms, rel=0.01)
    assert (row.p50_ci_low_ms, row.p50_ci_high_ms) == (rec.latency.p50_ci_low_ms, rec.latency.p50_ci_high_ms)


def test_matrix_speedups_memory_energy_accuracy_and_recommendation(db_path):
    db = open_db(db_path)
    _fleet(db)
    report = latency_report(db.conn, max_accuracy_drop=1.0)
    assert {(r.device_id, r.variant) for r in report.rows} == {
        (d, v)
        for d in ("pi-a", "pi-b")
        for v in ("fp32", "fp16", "int8-static", "int8-dynamic", "tflite-int8")
    }
    for device in ("pi-a", "pi-b"):
        base = _row(report, device, "fp32")
        assert base.is_baseline and base.speedup == pytest.approx(1.0) and base.accuracy_delta == 0.0
        int8 = _row(report, device, "int8-static")
        assert int8.speedup == pytest.approx(1 / 0.45, rel=0.05)
        assert int8.size_bytes == 1_000_000 and int8.peak_mb == 70.0
        assert int8.energy_j == pytest.approx(0.002 * 0.45) and int8.energy_method == "hwmon:ina219"
        assert int8.accuracy_delta == pytest.approx(-0.4)
        # tflite-int8 is fast but loses 2.5 points: over budget. int8-static is the pick.
        assert report.recommendations()[(device, "digits-cnn")].variant == "int8-static"
    # A budget of 3 points lets nothing faster in (int8-static is already the fastest) ...
    assert latency_report(db.conn, max_accuracy_drop=3.0).recommendations()[
        ("pi-a", "digits-cnn")
    ].variant == ("int8-static")
    # ... and a budget of 0.1 points leaves only fp16 (slower than fp32, so never) and fp32.
    strict = latency_report(db.conn, max_accuracy_drop=0.1)
    assert strict.recommendations()[("pi-a", "digits-cnn")].variant == "fp32"


def test_never_recommends_a_variant_slower_than_fp32(db_path):
    db = open_db(db_path)
    insert_results(
        db, [make_record("pi-a", v, seed=i) for i, v in enumerate(("fp32", "fp16", "int8-dynamic"))]
    )
    report = latency_report(db.conn)  # no accuracy budget: only speed counts
    assert report.recommendations()[("pi-a", "digits-cnn")].variant == "fp32"


def test_unknown_accuracy_is_not_within_a_budget_but_artifacts_table_fills_it(db_path):
    db = open_db(db_path)
    recs = [
        make_record("pi-a", v, seed=i, with_accuracy=False) for i, v in enumerate(("fp32", "int8-static"))
    ]
    insert_results(db, recs)
    assert (
        latency_report(db.conn, max_accuracy_drop=1.0).recommendations()[("pi-a", "digits-cnn")].variant
        == "fp32"
    )
    register_artifact(db, recs[1].artifact, fidelity={"accuracy_delta": -0.2})
    report = latency_report(db.conn, max_accuracy_drop=1.0)
    assert _row(report, "pi-a", "int8-static").accuracy_delta == -0.2
    assert report.recommendations()[("pi-a", "digits-cnn")].variant == "int8-static"


def test_manifest_accuracy_by_sha256(db_path, tmp_path):
    db = open_db(db_path)
    insert_results(
        db, [make_record("pi-a", v, seed=i, with_accuracy=False) for i, v in enumerate(("fp32", "fp16"))]
    )
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps({"artifacts": [{"sha256": sha("digits-cnnfp16"), "fidelity": {"accuracy_delta": -0.01}}]})
    )
    report = latency_report(db.conn, manifest=manifest)
    assert _row(report, "pi-a", "fp16").accuracy_delta == -0.01


def test_fastest_thread_count_is_shown_and_threads_filter_pins_one(db_path):
    db = open_db(db_path)
    insert_results(
        db,
        [
            make_record("pi-a", "fp32", base_ms=10.0, threads=4, seed=1),
            make_record("pi-a", "fp32", base_ms=30.0, threads=1, seed=2),
        ],
    )
    assert latency_report(db.conn).rows[0].threads == 4
    one = latency_report(db.conn, ReportFilter(threads=1)).rows[0]
    assert one.threads == 1 and one.p50_ms == pytest.approx(30.0, rel=0.05)


def test_filters_device_tag_model_since(db_path):
    db = open_db(db_path)
    _fleet(db)
    insert_results(
        db, [make_record("pi-c", "fp32", seed=99, finished_at="2024-06-01T00:00:00.000Z", model="other")]
    )
    assert {r.device_id for r in latency_report(db.conn, ReportFilter(devices=("pi-b",))).rows} == {"pi-b"}
    assert {r.device_id for r in latency_report(db.conn, ReportFilter(tag="lab")).rows} == {"pi-a"}
    assert {r.model for r in latency_report(db.conn, ReportFilter(model="other")).rows} == {"other"}
    recent = latency_report(db.conn, ReportFilter(since="2024-05-15T00:00:00.000Z"))
    assert {r.device_id for r in recent.rows} == {"pi-c"}
    assert "no fp32 baseline" not in " ".join(recent.notes)


def test_index_is_incremental_and_survives_vacuum(db_path):
    db = open_db(db_path)
    _fleet(db, runs=1)
    assert refresh_index(db.conn) == 10
    assert refresh_index(db.conn) == 0
    insert_results(db, [make_record("pi-a", "fp32", seed=500)])
    assert refresh_index(db.conn) == 1
    db.conn.execute("DELETE FROM results WHERE result_id = (SELECT result_id FROM results LIMIT 1)")
    db.conn.commit()
    db.conn.execute("VACUUM")
    refresh_index(db.conn)
    assert db.conn.execute("SELECT COUNT(*) FROM report_runs").fetchone()[0] == 10
    assert sum(r.runs for r in latency_report(db.conn, ReportFilter(batch=None)).rows) == 10


def test_failed_runs_are_indexed_but_not_pooled(db_path):
    db = open_db(db_path)
    insert_results(
        db, [make_record("pi-a", "fp32", seed=1), make_record("pi-a", "fp32", seed=2, status="failed")]
    )
    assert latency_report(db.conn).rows[0].runs == 1


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        (ReportFilter(devices=("pi-zz",)), "unknown device 'pi-zz'"),
        (ReportFilter(devices=("x' OR '1'='1",)), "unknown device"),
        (ReportFilter(tag="lab'; DROP TABLE results; --"), "no device has the tag"),
        (ReportFilter(model='" OR 1=1 --'), "unknown model"),
        (ReportFilter(since="2999-01-01T00:00:00.000Z"), "no successful results match"),
    ],
)
def test_bad_filters_give_clear_errors_and_no_sql_runs(db_path, filters, message):
    db = open_db(db_path)
    _fleet(db, runs=1)
    with pytest.raises(ReportError, match=message):
        latency_report(db.conn, filters)
    assert db.conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 10


def test_empty_database(db_path):
    db = open_db(db_path)
    with pytest.raises(ReportError, match="no results yet"):
        latency_report(db.conn)


def test_parse_since():
    from datetime import datetime, timezone

    now = lambda: datetime(2024, 5, 10, 12, 0, tzinfo=timezone.utc)  # noqa: E731
    assert parse_since("7d", now) == "2024-05-03T12:00:00.000Z"
    assert parse_since("90m", now) == "2024-05-10T10:30:00.000Z"
    assert parse_since("2024-05-01", now) == "2024-05-01T00:00:00.000Z"
    with pytest.raises(ReportError, match="cannot read the time"):
        parse_since("'; DROP TABLE results; --", now)


def test_zero_latency_and_odd_variant_names_do_not_break(db_path):
    db = open_db(db_path)
    rec = make_record("pi-a", "fp32", seed=1)
    odd = replace(
        rec,
        result_id="00000000-0000-0000-0000-000000000001",
        artifact=ArtifactInfo(
            name="we'ird\"name.onnx", sha256=sha("odd"), format="onnx", size_bytes=5, variant=""
        ),
        latency=replace(rec.latency, samples_ms=(0.0, 0.0, 1e-9)),
    )
    insert_results(db, [rec, odd])
    names = {r.variant for r in latency_report(db.conn).rows}
    assert "we'ird\"name.onnx" in names
    assert isinstance(LatencyStats, type)


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        (None, None, {1, 2, 3, 4}),
        ("2024-05-01T15:00:00Z", None, {2, 3, 4}),  # partial first day from the per-run rows
        ("2024-05-02", None, {3, 4}),  # whole days from the daily rollup
        (None, "2024-05-02T12:00:00Z", {1, 2, 3}),  # partial last day
        ("2024-05-01T15:00:00Z", "2024-05-01T23:00:00Z", {2}),  # same day at both ends
        ("2024-05-01T15:00:00Z", "2024-05-03T00:30:00Z", {2, 3, 4}),
    ],
)
def test_time_windows_count_exactly_the_runs_inside(db_path, since, until, expected):
    db = open_db(db_path)
    times = {1: "2024-05-01T10:00:00.000Z", 2: "2024-05-01T20:00:00.000Z", 3: "2024-05-02T08:00:00.000Z",
             4: "2024-05-03T00:10:00.000Z"}  # fmt: skip
    # Run k has n = 10**k samples, so the pooled count says exactly which runs were included.
    insert_results(
        db, [make_record("pi-a", "fp32", seed=k, n=10**k, finished_at=t) for k, t in times.items()]
    )
    f = ReportFilter(since=parse_since(since) if since else None, until=parse_since(until) if until else None)
    row = latency_report(db.conn, f).rows[0]
    assert row.n == sum(10**k for k in expected) and row.runs == len(expected)
