"""`edgebench bench`: table, comparison, JSON output, one-line errors and failed records."""

from __future__ import annotations

import json
import re
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


def test_run_cap_and_unsupported_percentiles(tiny_mlp_tflite, tmp_path):
    """--max-runs 30 ends the runs before --min-time and says so; 30 runs support neither p90 nor p99."""
    out = tmp_path / "r.json"
    res = invoke(str(tiny_mlp_tflite), "--quick", "--runs", "20", "--max-runs", "30", "--out", str(out))
    assert res.exit_code == 0, res.output
    header, _, row = res.output.splitlines()[1:4]
    cells = row.split()
    assert header.split()[6:8] == ["p90", "p99"] and cells[4:6] == ["n<64", "n<662"]
    assert "timed runs: stop max runs 30: " in res.output and "of 0.2 s min time" in res.output
    assert "samples exact: all 30 timed runs" in res.output
    (rec,) = [ResultRecord.from_dict(d) for d in json.loads(out.read_text())]
    assert rec.latency.n == 30 and rec.latency.p90_ms is None and rec.latency.p99_ms is None
    assert rec.config.protocol.max_runs == 30 and rec.config.options["samples"] == "exact: all 30 timed runs"


def test_caps_below_their_floors_are_usage_errors(tiny_mlp_onnx):
    res = CliRunner().invoke(main, ["bench", str(tiny_mlp_onnx), "--min-time", "5", "--max-time", "2"])
    assert res.exit_code == 2 and "--max-time 2 is below the minimum time 5 s" in res.output
    res = CliRunner().invoke(main, ["bench", str(tiny_mlp_onnx), "--max-time", "2"])  # default floor: 10 s
    assert res.exit_code == 2 and "below the minimum time 10 s" in res.output
    res = CliRunner().invoke(main, ["bench", str(tiny_mlp_onnx), "--quick", "--max-runs", "10"])
    assert res.exit_code == 2 and "--max-runs 10 is below the minimum runs 20 (--runs)" in res.output
    res = CliRunner().invoke(main, ["bench", "--help"])
    assert "at least --runs runs AND at least --min-time seconds" in " ".join(res.output.split())


def test_a_sub_millisecond_model_is_timed_for_the_whole_floor(tiny_mlp_tflite, tmp_path):
    """A real 1.5 s run (the old --quick cap: 5,000 runs, ~0.01 s of this model): the whole 1.5 s, and
    past 65,536 runs the record says the samples are a histogram."""
    out = tmp_path / "r.json"
    res = invoke(str(tiny_mlp_tflite), "--quick", "--min-time", "1.5", "--out", str(out))
    assert res.exit_code == 0, res.output
    (rec,) = [ResultRecord.from_dict(d) for d in json.loads(out.read_text())]
    stop = re.fullmatch(r"min runs and min time: (\d+) runs in ([\d.]+) s", rec.config.options["stop"])
    assert stop and int(stop[1]) == rec.latency.n > 5000 and float(stop[2]) >= 1.5
    n = rec.latency.n
    assert rec.config.options["samples"].startswith(
        f"log histogram of {n} runs" if n > 65_536 else f"exact: all {n}"
    )
    assert rec.latency.p99_ms is not None and len(rec.latency.samples_ms) <= 65_536
