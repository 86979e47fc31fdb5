"""`edgebench report ops`: where the time goes, from per-operator profiles stored with the results.

Exact aggregation on hand-made records, then the real thing: the agent measures a tiny ONNX and a tiny
TFLite model with profile_ops, the records go into a real collector DB, the report reads them back."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from collector.reports.latency import ReportFilter
from collector.reports.ops import ops_report
from collector.store.report_index import ReportError
from collector.store.sqlite import insert_results, open_db
from edgebench.cli import main
from testkit.records import make_record
from wire.schema import OpProfile


def _ort(share_conv: float, at: str):
    rest = 1.0 - share_conv
    ops = (
        OpProfile("Conv", "conv1", 0.3, share_conv / 2, "CPUExecutionProvider"),
        OpProfile("Conv", "conv2", 0.3, share_conv / 2, "CPUExecutionProvider"),
        OpProfile("Gemm", "fc", 0.1, rest, "CPUExecutionProvider"),
    )
    return replace(make_record("pi-a", finished_at=at), profile=ops)


def _litert(at: str):
    rec = make_record("pi-b", precision="int8", finished_at=at)
    ops = (
        OpProfile("CONV_2D", "op0", 0.0, 0.0, "XNNPACK delegate"),
        OpProfile("CONV_2D", "op1", 0.0, 0.0, "XNNPACK delegate"),
        OpProfile("SOFTMAX", "op2", 0.0, 0.0, "CPU kernels"),
    )
    return replace(rec, config=replace(rec.config, runtime="litert"), profile=ops)


@pytest.fixture
def db(db_path):
    db = open_db(db_path)
    insert_results(
        db,
        [
            _ort(0.6, "2025-01-01T00:00:01.000Z"),
            _ort(0.8, "2025-01-02T00:00:01.000Z"),
            _litert("2025-01-02T00:00:02.000Z"),
            make_record("pi-a", precision="fp16"),  # no profile: not in the report
        ],
    )
    db.conn.execute("INSERT INTO devices (device_id, tags) VALUES ('pi-a', '[\"lab\"]')")
    db.conn.commit()
    yield db.conn
    db.conn.close()


def test_op_types_are_ranked_by_mean_share_over_runs(db):
    report = ops_report(db)
    assert report.profiled_runs == 3
    ort, lite = report.rows
    assert (ort.device_id, ort.runs, ort.timed) == ("pi-a", 2, True)
    conv, gemm = ort.ops
    assert conv.op_type == "Conv" and conv.share == pytest.approx(0.7) and conv.nodes == 2
    assert conv.mean_ms == pytest.approx(0.6)
    assert gemm.share == pytest.approx(0.3)
    assert ort.providers == (("CPUExecutionProvider", 3),)
    assert lite.runtime == "litert" and not lite.timed
    assert [(o.op_type, o.nodes, o.share) for o in lite.ops] == [("CONV_2D", 2, None), ("SOFTMAX", 1, None)]
    assert lite.providers == (("XNNPACK delegate", 2), ("CPU kernels", 1))


def test_filters_and_bad_filters(db):
    assert [r.device_id for r in ops_report(db, ReportFilter(tag="lab", batch=None)).rows] == ["pi-a"]
    since = ops_report(db, ReportFilter(since="2025-01-02T00:00:00.000Z", batch=None)).rows
    assert [(r.device_id, r.runs) for r in since] == [("pi-a", 1), ("pi-b", 1)]
    with pytest.raises(ReportError, match="unknown device 'nope'"):
        ops_report(db, ReportFilter(devices=("nope",), batch=None))
    with pytest.raises(ReportError, match='unknown model "x\'; DROP TABLE results; --"'):
        ops_report(db, ReportFilter(model="x'; DROP TABLE results; --", batch=None))
    assert db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 4  # parameterised: nothing ran


def test_cli_formats(db, db_path):
    def run(*args):
        return CliRunner().invoke(
            main, ["report", "ops", "--db", str(db_path), *args], catch_exceptions=False
        )

    table = run()
    assert table.exit_code == 0, table.output
    assert "Conv 70%, Gemm 30%" in table.output
    assert "not timed; left on CPU kernels: SOFTMAX" in table.output
    assert "XNNPACK delegate 2, CPU kernels 1" in table.output
    data = json.loads(run("--format", "json").output)
    assert data["profiled_runs"] == 3 and data["rows"][0]["ops"][0]["op_type"] == "Conv"
    assert run("--format", "md").output.startswith("| device | model |")
    html = run("--format", "html").output
    assert "where the time goes" in html and "data:image/png;base64," in html
    bad = run("--device", "nope")
    assert bad.exit_code == 1 and "unknown device 'nope'" in bad.output and "Traceback" not in bad.output


def test_empty_database_says_what_to_do(db_path):
    open_db(db_path).conn.close()
    out = CliRunner().invoke(main, ["report", "ops", "--db", str(db_path)])
    assert out.exit_code == 0 and "push or bench with --profile-ops" in out.output


def test_real_profiles_from_the_agent_end_up_in_the_report(db_path, tiny_mlp_onnx, tiny_mlp_tflite):
    from agent.measure.bench import BenchOptions, run_benchmark
    from agent.probes.facts import device_info

    options = replace(BenchOptions.preset("quick"), profile_ops=True)
    device = device_info("pi-real")
    records = [
        r for path in (tiny_mlp_onnx, tiny_mlp_tflite) for r in run_benchmark(path, options, device=device)
    ]
    assert all(r.status == "ok" and r.profile for r in records)
    db = open_db(db_path)
    insert_results(db, records)
    rows = {r.runtime: r for r in ops_report(db.conn).rows}
    db.conn.close()
    assert rows["onnxruntime"].timed and sum(o.share or 0 for o in rows["onnxruntime"].ops) > 0.5
    assert {o.op_type for o in rows["onnxruntime"].ops} & {"MatMul", "Gemm", "FusedGemm", "FusedMatMul"}
    assert not rows["litert"].timed and rows["litert"].providers[0][0] in ("XNNPACK delegate", "CPU kernels")


def test_the_latency_html_report_has_the_section_when_profiles_exist(db):
    from collector.reports.extras import html_extras
    from collector.reports.latency import latency_report
    from collector.reports.render import render_report
    from collector.reports.source import ReportSource

    report = latency_report(db, ReportFilter())
    html = render_report(report, "html", html_extras(ReportSource.read(db), report))
    assert "Where the time goes (per-operator profiles)" in html and "Conv 70%, Gemm 30%" in html


def test_migration_4_marks_the_profiled_results_of_an_older_database(db_path):
    import sqlite3

    from collector.store.migrations import MIGRATIONS, RESULT_COLUMNS_V1, apply_migrations

    conn = sqlite3.connect(db_path)
    apply_migrations(conn, MIGRATIONS[:3])  # a database from before migration 4
    profiled, plain = _ort(0.6, "2025-01-01T00:00:01.000Z"), make_record("pi-a")
    names = [n for n, _ in RESULT_COLUMNS_V1]
    for rec in (profiled, plain):
        conn.execute(
            "INSERT INTO results (result_id, device_id, model, variant, runtime, threads, status, "
            "finished_at, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rec.result_id, "pi-a", "mlp", "v", "onnxruntime", 1, "ok", rec.finished_at, rec.to_json()),
        )
    conn.commit()
    assert "profile_ops" not in names
    assert apply_migrations(conn) == [4]
    marks = dict(conn.execute("SELECT result_id, profile_ops FROM results"))
    assert marks == {profiled.result_id: 3, plain.result_id: None}
    assert [r.runs for r in ops_report(conn).rows] == [1]
    plan = " ".join(
        r[3] for r in conn.execute("EXPLAIN QUERY PLAN SELECT * FROM results WHERE profile_ops > 0")
    )
    assert "idx_results_profiled" in plan
    conn.close()
