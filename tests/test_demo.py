"""`edgebench demo` end to end with a small budget: real broker, collector, agents, converter."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from edgebench.demo import DEFAULT_DEVICES, DemoError, DemoOptions, run_demo


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
