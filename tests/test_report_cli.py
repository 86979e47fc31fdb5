"""`edgebench report ...` through the real root CLI: formats, files, clear one-line errors."""

from __future__ import annotations

import csv
import io
import json
import uuid

import pytest
from click.testing import CliRunner

from collector.store.sqlite import insert_results, open_db
from edgebench.cli import main
from testkit.report_records import make_record

JOB = str(uuid.UUID(int=7))


@pytest.fixture
def db(db_path):
    db = open_db(db_path)
    recs = [
        make_record(dev, v, base_ms=base, seed=10 * i + k, tags=(tag,), job_id=JOB)
        for i, (dev, base, tag) in enumerate((("pi-a", 10.0, "lab"), ("pi-b", 20.0, "field")))
        for k, v in enumerate(("fp32", "int8-static", "tflite-int8"))
    ]
    insert_results(db, recs)
    db.conn.close()
    return db_path


def run(*args):
    return CliRunner().invoke(main, ["report", *map(str, args)], catch_exceptions=False)


def test_table_shows_both_devices_and_the_pick(db):
    res = run("latency", "--db", db, "--max-accuracy-drop", "1")
    assert res.exit_code == 0, res.output
    assert "pi-a / digits-cnn: ship int8-static" in res.output
    assert "pi-b / digits-cnn: ship int8-static" in res.output
    assert "baseline" in res.output


def test_csv_json_md(db):
    rows = list(csv.DictReader(io.StringIO(run("latency", "--db", db, "-f", "csv").output)))
    assert len(rows) == 6 and {r["device"] for r in rows} == {"pi-a", "pi-b"}
    data = json.loads(run("latency", "--db", db, "-f", "json", "--max-accuracy-drop", "1").output)
    assert data["recommendations"] == {"pi-a/digits-cnn": "int8-static", "pi-b/digits-cnn": "int8-static"}
    assert all(r["p50_ci_low_ms"] <= r["p50_ms"] <= r["p50_ci_high_ms"] for r in data["rows"])
    md = run("latency", "--db", db, "-f", "md").output
    assert md.startswith("| device |") and "|---|" in md


def test_html_to_file(db, tmp_path):
    out = tmp_path / "r.html"
    res = run("latency", "--db", db, "-f", "html", "--out", out)
    assert res.exit_code == 0 and out.read_text().startswith("<!DOCTYPE html>")


def test_compare_and_fail_on_regression(db):
    res = run("compare", JOB, f"job:{JOB}", "--db", db, "-f", "json")
    assert res.exit_code == 0
    data = json.loads(res.output)
    # one run per side: never flagged, whatever the noise inside the runs says
    assert {r["verdict"] for r in data["rows"]} == {"inconclusive (fewer than 2 runs on a side)"}
    assert any("at least 2 runs on each side" in n for n in data["notes"])
    assert run("compare", JOB, JOB, "--db", db, "--fail-on-regression").exit_code == 0
    assert "Welch" in run("compare", "--help").output
    # a short job id (as `fleet jobs` prints it) is accepted
    assert run("compare", f"job:{JOB[:8]}", JOB, "--db", db).exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("latency", "--device", "pi-zz"), "unknown device 'pi-zz'"),
        (("latency", "--tag", "x'); DROP TABLE results; --"), "no device has the tag"),
        (("latency", "--model", "nope"), "unknown model"),
        (("latency", "--since", "last tuesday"), "cannot read the time"),
        (("latency", "--max-accuracy-drop", "-1"), "must be a number of points >= 0"),
        (("compare", "nope", "nope"), "neither a job id nor a result id"),
    ],
)
def test_errors_are_one_line(db, args, message):
    res = run(*args, "--db", db)
    assert res.exit_code == 1
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_missing_and_empty_database(tmp_path):
    res = run("latency", "--db", tmp_path / "none.db")
    assert res.exit_code == 1 and "no database at" in res.output
    assert not (tmp_path / "none.db").exists()
    open_db(tmp_path / "empty.db").conn.close()
    res = run("latency", "--db", tmp_path / "empty.db")
    assert res.exit_code == 1 and "no results yet" in res.output
