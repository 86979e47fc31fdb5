"""`edgebench demo` end to end with a small budget: real broker, collector, agents, converter."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from edgebench.demo import (
    DEFAULT_DEVICES,
    MARKER,
    DemoError,
    DemoOptions,
    DemoResult,
    clear_previous_run,
    run_demo,
)
from edgebench.demo_cli import closing_line


@pytest.fixture
def small_recipe(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps([{"pass": "int8_static"}, {"pass": "tflite_int8"}]))
    return path


def test_demo_reports_every_device_and_variant(tmp_path, small_recipe):
    lines: list[str] = []
    options = DemoOptions(
        workdir=tmp_path / "demo", devices=DEFAULT_DEVICES[:2], recipe=str(small_recipe), min_time_s=0.05,
        timeout_s=300, broker="mosquitto",
    )  # fmt: skip
    result = run_demo(options, log=lines.append)
    devices = {d.device_id for d in DEFAULT_DEVICES[:2]}
    assert set(result.devices) == devices
    assert set(result.variants) == {"fp32", "int8_static", "tflite_int8"}
    conn = sqlite3.connect(result.db_path)
    cells = set(conn.execute("SELECT device_id, variant FROM results WHERE status = 'ok'").fetchall())
    assert cells == {(d, v) for d in devices for v in ("fp32", "int8_static", "tflite_int8")}
    threads = dict(conn.execute("SELECT device_id, MAX(threads) FROM results GROUP BY device_id").fetchall())
    assert threads == {"pi4-kitchen": 1, "pi5-garage": 2}  # each agent's own thread limit
    conn.close()
    for device in devices:
        assert device in result.report_text
    html = result.html_path.read_text()
    assert html.startswith("<!DOCTYPE html>") or html.lower().startswith("<!doctype html>")
    assert "data:image/png;base64," in html
    assert any("broker: mosquitto" in line for line in lines)
    assert result.report_results == result.results and set(result.report_devices) == devices
    assert closing_line(result).endswith(f"{result.results} results from 2 devices x 3 variants.")
    # Run again in the same folder with one device: a fresh database, so the report and the closing
    # line show this run only (not the first run's results, nor its second device).
    again = run_demo(replace(options, devices=DEFAULT_DEVICES[:1]), log=lines.append)
    assert again.db_path == result.db_path and again.report_devices == ("pi4-kitchen",)
    assert again.report_results == again.results == 3
    assert "pi5-garage" not in again.report_text and "runs=2" not in again.report_text
    assert any("a fresh start" in line for line in lines)
    assert closing_line(again).endswith("3 results from 1 devices x 3 variants.")


def test_demo_with_the_embedded_broker_speaks_mqtt_311(tmp_path, small_recipe):
    pytest.importorskip("amqtt")
    lines: list[str] = []
    options = DemoOptions(
        workdir=tmp_path / "demo", devices=DEFAULT_DEVICES[:1], recipe=str(small_recipe), min_time_s=0.05,
        timeout_s=300, broker="embedded",
    )  # fmt: skip
    result = run_demo(options, log=lines.append)
    assert result.broker.startswith("amqtt")
    assert result.results == 3
    assert any("MQTT 3" in line for line in lines)


def test_demo_model_without_data_is_a_clear_error(tmp_path, tiny_cnn_onnx):
    options = DemoOptions(workdir=tmp_path / "demo", devices=DEFAULT_DEVICES[:1], model=str(tiny_cnn_onnx))
    with pytest.raises(DemoError, match="--model needs --calib and --val"):
        run_demo(options, log=lambda line: None)


def test_demo_cli_error_has_no_traceback(tmp_path, tiny_cnn_onnx):
    args = ["demo", "--workdir", str(tmp_path), "--model", str(tiny_cnn_onnx)]
    proc = subprocess.run(
        [sys.executable, "-m", "edgebench", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    assert "Error: --model needs --calib and --val" in proc.stderr
    assert "Traceback" not in proc.stderr


def _previous_run(work: Path) -> None:
    """What a finished demo run leaves in its folder (a real database with another run's device)."""
    from collector.store.sqlite import insert_results, open_db
    from testkit.records import make_record

    db = open_db(work / "edgebench.db")
    insert_results(db, [make_record("x86-gateway")])
    db.close()
    for name, text in (
        (MARKER, "x"), ("edgebench.db.collector/state-c.json", "{}"), ("mosquitto/mosquitto.db", "x"),
        ("mosquitto/mosquitto.conf", "x"), ("devices/x86-gateway/agent.toml", "x"),
        ("devices/x86-gateway/outbox/1.json", "{}"), ("logs/collector.log", "x"), ("report.html", "x"),
        ("keys/collector.key", "k"), ("keys/collector.pub", "p"), ("artifacts/manifest.json", "{}"),
    ):  # fmt: skip
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)


def test_a_rerun_clears_the_previous_runs_state_only(tmp_path):
    work = tmp_path / "demo"
    _previous_run(work)
    removed = clear_previous_run(work)
    assert set(removed) == {
        "edgebench.db", "edgebench.db.collector", "mosquitto/mosquitto.db", "devices", "logs", "report.html"
    }  # fmt: skip
    left = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())
    kept = ["artifacts/manifest.json", "keys/collector.key", "keys/collector.pub", "mosquitto/mosquitto.conf"]
    assert left == [MARKER, *kept]
    assert clear_previous_run(work) == []  # nothing left to clear


def test_a_folder_that_is_no_demos_is_never_cleared(tmp_path):
    for name in ("edgebench.db", "devices/mine/notes.txt", "logs/app.log", "report.html"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("mine")
    assert clear_previous_run(tmp_path) == []
    assert all((tmp_path / n).exists() for n in ("edgebench.db", "devices/mine/notes.txt", "logs/app.log"))


def test_keep_accumulates_and_the_closing_line_says_what_the_report_pooled(tmp_path):
    work = tmp_path / "demo"
    _previous_run(work)
    options = DemoOptions(workdir=work, devices=DEFAULT_DEVICES[:1], keep=True, broker="none")
    with pytest.raises(DemoError, match="unknown broker choice"):  # stops right after the start
        run_demo(options, log=lambda line: None)
    assert (work / "edgebench.db").exists() and (work / "devices/x86-gateway/agent.toml").exists()
    with pytest.raises(DemoError, match="unknown broker choice"):
        run_demo(replace(options, keep=False), log=lambda line: None)
    assert not (work / "edgebench.db").exists() and (work / "keys/collector.key").exists()
    base = dict(db_path=work / "edgebench.db", html_path=work / "report.html", manifest_path=work / "m.json",
                broker="mosquitto", report_text="", variants=("fp32", "int8"), seconds=41.6)  # fmt: skip
    fresh = DemoResult(**base, devices=("a", "b"), results=4, report_results=4, report_devices=("a", "b"))
    assert closing_line(fresh) == "done in 42 s: 4 results from 2 devices x 2 variants."
    kept = DemoResult(
        **base, devices=("a",), results=2, report_results=6, report_devices=("a", "b"), kept=True
    )
    assert closing_line(kept) == (
        "done in 42 s: 2 results from 1 devices x 2 variants this run; the report pools every run kept in "
        f"{work / 'edgebench.db'}: 6 results from 2 devices (--keep)."
    )
