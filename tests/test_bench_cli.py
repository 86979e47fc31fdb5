"""`edgebench bench`: table, comparison, JSON output, one-line errors and failed records."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from edgebench.cli import main
from wire.schema import ResultRecord

FAST = ["--quick", "--runs", "20", "--min-time", "0.05", "--max-time", "1"]


def invoke(*args: str):
    return CliRunner().invoke(main, ["bench", *args], catch_exceptions=False)


def test_single_model_table(tiny_mlp_tflite):
    res = invoke(str(tiny_mlp_tflite), *FAST)
    assert res.exit_code == 0, res.output
    assert "tiny_mlp.tflite" in res.output and "p50 ms" in res.output and "95% CI" in res.output
    assert "memory (proc-status-vmhwm (fresh process))" in res.output
    assert "energy: unavailable (no sensor)" in res.output


def test_several_models_compare_and_json(tiny_mlp_onnx, tiny_mlp_tflite, tmp_path):
    out = tmp_path / "records.json"
    res = invoke(
        str(tiny_mlp_onnx),
        str(tiny_mlp_tflite),
        *FAST,
        "--threads",
        "1",
        "--json",
        "--out",
        str(out),
        "--device-id",
        "bench-box",
    )
    assert res.exit_code == 0, res.output
    records = [ResultRecord.from_dict(d) for d in json.loads(out.read_text())]
    assert [r.artifact.name for r in records] == ["tiny_mlp.onnx", "tiny_mlp.tflite"]
    assert all(
        r.status == "ok" and r.device.device_id == "bench-box" and r.config.threads == 1 for r in records
    )
    assert json.loads(res.stdout) == json.loads(out.read_text())  # --json: stdout is only the JSON
    assert "speedup" in res.stderr and "1.00x" in res.stderr


def test_bad_inputs_one_line_error_and_failed_record(tiny_mlp_onnx, tmp_path):
    out = tmp_path / "r.json"
    missing = tmp_path / "missing.onnx"
    res = invoke(str(tiny_mlp_onnx), str(missing), str(tmp_path), *FAST, "--out", str(out))
    assert res.exit_code == 1
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("Error: 2 of 3 benchmark(s) failed:")
    assert "missing.onnx: no such file" in last and "is a directory" in last
    assert "Traceback" not in res.output
    statuses = [d["status"] for d in json.loads(out.read_text())]
    assert statuses == ["ok", "failed", "failed"]


def test_bad_options(tiny_mlp_onnx):
    res = CliRunner().invoke(main, ["bench", str(tiny_mlp_onnx), "--threads", "one"])
    assert res.exit_code == 2 and "comma list of integers" in res.output
    res = CliRunner().invoke(main, ["bench", str(tiny_mlp_onnx), "--shape", "x=1xq"])
    assert res.exit_code == 1 and "dimensions must be integers" in res.output


def test_console_script_real_process(tiny_mlp_tflite, tmp_path):
    """Through the real entry point: exit codes and stderr of a separate process."""
    bad = tmp_path / "m.tflite"
    bad.write_bytes(b"garbage!" * 8)
    proc = subprocess.run(
        [sys.executable, "-m", "edgebench", "bench", str(bad), *FAST],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "m.tflite" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: 1 of 1 benchmark(s) failed: m.tflite:")
