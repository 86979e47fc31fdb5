"""The measurement engine on real runtimes (onnxruntime, LiteRT) with tiny models and tiny budgets."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from agent.measure.bench import BenchOptions, run_benchmark
from agent.probes.facts import device_info
from wire.schema import BenchSettings, ResultRecord

SYSFS = Path(__file__).parent / "fixtures" / "sysfs"
TINY = dict(
    warmup_min_runs=3, warmup_window=3, warmup_max_s=0.5, min_runs=20, min_time_s=0.05, max_time_s=1.0
)


@pytest.fixture(scope="module")
def device():
    return device_info("test-device", ("ci",))


def opts(**kw) -> BenchOptions:
    return BenchOptions.preset("quick", **kw).with_protocol(**TINY)


class FakeNs:
    """Every read advances 1 ms: each timed inference measures exactly 1 ms."""

    def __init__(self) -> None:
        self.t = 0

    def __call__(self) -> int:
        self.t += 1_000_000
        return self.t


def test_onnx_fresh_process_record(tiny_mlp_onnx, device):
    (rec,) = run_benchmark(tiny_mlp_onnx, opts(profile_ops=True), device=device, job_id="job-1")
    assert rec.status == "ok", rec.error
    assert rec.config.runtime == "onnxruntime" and rec.config.runtime_version
    assert rec.config.input_shapes == {"x": (1, 16)} and rec.config.options["isolation"] == "fresh process"
    s = rec.latency
    assert s.n >= 20 and 0 < s.min_ms <= s.p50_ms <= s.max_ms
    assert s.p50_ci_low_ms <= s.p50_ms <= s.p50_ci_high_ms
    assert s.warmup_runs >= 6 and len(s.samples_ms) == s.n
    assert rec.config.options["samples"] == f"exact: all {s.n} timed runs"
    assert rec.cold_start.load_ms > 0 and rec.cold_start.first_inference_ms > 0
    m = rec.memory
    assert m.method == "proc-status-vmhwm (fresh process)"
    assert 0 < m.baseline_rss_mb < m.after_import_rss_mb <= m.load_peak_mb
    assert m.inference_peak_mb > 0 and m.rss_anon_mb > 0 and m.rss_file_mb > 0 and m.growth_mb is not None
    assert rec.cpu.cpu_s_per_inference >= 0
    assert rec.energy.method == "unavailable"  # this VM has no sensor, and says so
    assert {p.op_type for p in rec.profile} >= {"Gemm"}
    assert sum(p.share for p in rec.profile) == pytest.approx(1.0)
    assert rec.artifact.format == "onnx" and rec.job_id == "job-1"
    assert ResultRecord.from_json(rec.to_json()) == rec


def test_tflite_record_and_delegated_ops(tiny_mlp_tflite, device):
    (rec,) = run_benchmark(tiny_mlp_tflite, opts(profile_ops=True), device=device)
    assert rec.status == "ok", rec.error
    assert rec.config.runtime in ("litert", "tflite-runtime")
    assert rec.latency.n >= 20 and rec.memory.load_peak_mb > 0
    assert [(p.op_type, p.provider) for p in rec.profile] == [("FULLY_CONNECTED", "XNNPACK delegate")] * 2


def test_thread_and_batch_sweep_in_process_with_fake_clock(tiny_cnn_onnx, device):
    options = opts(threads=(1, 2), batches=(1, 3), isolate=False, clock=FakeNs())
    records = run_benchmark(tiny_cnn_onnx, options, device=device)
    assert [(r.config.threads, r.config.batch) for r in records] == [(1, 1), (1, 3), (2, 1), (2, 3)]
    for r in records:
        assert r.status == "ok", r.error
        assert r.config.input_shapes == {"x": (r.config.batch, 1, 16, 16)}
        s = r.latency
        # exact: each timed run reads the clock twice (1 ms apart); 0.05 s needs 25 runs of 2 ms of clock
        assert s.n == 25 and s.p50_ms == s.min_ms == s.max_ms == 1.0 and s.cv == 0.0 and s.stable
        assert s.warmup_runs == 6 and s.throughput_ips == pytest.approx(1000.0 * r.config.batch)
        assert r.memory.method.endswith("(in-process, shares the caller's heap)")


def test_repeats_in_fresh_processes(tiny_mlp_onnx, device):
    (rec,) = run_benchmark(tiny_mlp_onnx, opts().with_protocol(repeats=2), device=device)
    assert rec.status == "ok", rec.error
    assert len(rec.latency.repeat_medians_ms) == 2 and rec.config.options["repeats"] == "2"
    assert rec.latency.n >= 40


def test_two_inputs_random_and_npz(two_input_onnx, device, tmp_path):
    (rec,) = run_benchmark(two_input_onnx, opts(isolate=False), device=device)
    assert rec.status == "ok" and set(rec.config.input_shapes) == {"a", "b"}
    good = tmp_path / "good.npz"
    np.savez(good, a=np.ones((1, 8), np.float32), b=np.zeros((1, 8), np.float32))
    (rec,) = run_benchmark(two_input_onnx, opts(inputs=good), device=device)
    assert rec.status == "ok" and rec.config.input_source == "good.npz"
    bad = tmp_path / "bad.npz"
    np.savez(bad, a=np.ones((1, 8), np.float32), c=np.zeros((1, 8), np.float32))
    (rec,) = run_benchmark(two_input_onnx, opts(inputs=bad), device=device)
    assert rec.status == "failed" and "arrays named a, c but the model's inputs are a, b" in rec.error
    single = tmp_path / "x.npy"
    np.save(single, np.ones((1, 8), np.float32))
    (rec,) = run_benchmark(two_input_onnx, opts(inputs=single), device=device)
    assert rec.status == "failed" and "has 2 inputs" in rec.error


def test_shapes(tiny_cnn_onnx, tiny_mlp_onnx, device, tmp_path):
    (rec,) = run_benchmark(tiny_cnn_onnx, opts(shapes={"x": (2, 1, 16, 16)}), device=device)
    assert rec.status == "ok" and rec.config.input_shapes == {"x": (2, 1, 16, 16)}
    (rec,) = run_benchmark(tiny_cnn_onnx, opts(shapes={"x": (1, 1, 15, 16)}), device=device)
    assert rec.status == "failed" and "does not fit the model's ?x1x16x16" in rec.error
    (rec,) = run_benchmark(tiny_cnn_onnx, opts(shapes={"y": (1, 2)}), device=device)
    assert rec.status == "failed" and "not inputs of this model" in rec.error
    npy = tmp_path / "wrong.npy"
    np.save(npy, np.ones((1, 17), np.float32))
    (rec,) = run_benchmark(tiny_mlp_onnx, opts(inputs=npy), device=device)
    assert rec.status == "failed" and "x has shape 1x17, the model wants ?x16" in rec.error


def _runtime_failing_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([3, 7], np.int64), "shape")
    node = helper.make_node("Reshape", ["x", "shape"], ["y"])
    graph = helper.make_graph(
        [node],
        "bad_reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 7])],
        [shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    "case", ["missing", "directory", "extension", "corrupt", "truncated", "runtime", "truncated-tflite"]
)
def test_bad_models_give_failed_records(case, tmp_path, tiny_mlp_onnx, tiny_mlp_tflite, device):
    path = {
        "missing": tmp_path / "nope.onnx",
        "directory": tmp_path,
        "extension": tmp_path / "model.pb",
        "corrupt": tmp_path / "corrupt.onnx",
        "truncated": tmp_path / "truncated.onnx",
        "runtime": tmp_path / "fails_at_run.onnx",
        "truncated-tflite": tmp_path / "truncated.tflite",
    }[case]
    if case == "extension":
        path.write_bytes(b"\x00" * 64)
    elif case == "corrupt":
        path.write_bytes(b"this is not a protobuf" * 10)
    elif case == "truncated":
        data = tiny_mlp_onnx.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "truncated-tflite":
        data = tiny_mlp_tflite.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif case == "runtime":
        _runtime_failing_onnx(path)
    records = run_benchmark(path, opts(threads=(1, 2)), device=device)
    assert [r.status for r in records] == ["failed", "failed"]
    expected = {
        "missing": "no such file",
        "directory": "is a directory",
        "extension": "unsupported model extension '.pb'",
        "corrupt": "onnxruntime cannot load the model",
        "truncated": "onnxruntime cannot load the model",
        "runtime": "the first inference failed",
        "truncated-tflite": "cannot load the model",
    }[case]
    for r in records:
        assert expected in r.error and "\n" not in r.error and "Traceback" not in r.error
        assert ResultRecord.from_json(r.to_json()) == r


def test_cancel_gives_aborted(tiny_mlp_onnx, device):
    cancel = threading.Event()
    cancel.set()
    (rec,) = run_benchmark(tiny_mlp_onnx, opts(), device=device, cancel=cancel)
    assert rec.status == "aborted"
    # set mid-run: the child process is killed by PID, the record says aborted
    cancel = threading.Event()
    timer = threading.Timer(1.5, cancel.set)
    timer.start()
    try:
        long = BenchOptions.preset("quick").with_protocol(
            min_runs=10**9, max_runs=10**9, min_time_s=120, max_time_s=120
        )
        (rec,) = run_benchmark(tiny_mlp_onnx, long, device=device, cancel=cancel)
    finally:
        timer.cancel()
    assert rec.status == "aborted" and rec.error


def test_board_fixture_reaches_the_record(tiny_mlp_onnx, device, monkeypatch):
    """A Pi 4 tree with a throttled fake vcgencmd and an INA219: the record shows it, the verdict fails."""
    monkeypatch.setenv("PATH", f"{SYSFS / 'pi4' / 'bin'}:" + __import__("os").environ["PATH"])
    (rec,) = run_benchmark(tiny_mlp_onnx, opts(root=SYSFS / "pi4"), device=device)
    assert rec.status == "ok", rec.error
    b = rec.board
    assert b.temp_start_c == pytest.approx(61.317) and b.freq_start_mhz == 1500.0 and b.governor == "ondemand"
    assert b.throttled_now and b.throttled_bits == 0x50005 and b.psi_cpu_some_avg10 == 1.5
    assert rec.energy.method == "hwmon:ina219" and rec.energy.avg_power_w == pytest.approx(3.45)
    assert rec.energy.joules_per_inference > 0
    assert not rec.latency.stable and "board throttled" in rec.latency.verdict


def test_from_settings():
    o = BenchOptions.from_settings(
        BenchSettings(
            preset="quick",
            threads=(1, 4),
            min_runs=7,
            repeats=2,
            shapes={"x": (1, 3)},
            profile_ops=True,
            cooldown_c=55.0,
        )
    )
    assert o.protocol.preset == "quick" and o.protocol.min_runs == 7 and o.protocol.repeats == 2
    assert o.threads == (1, 4) and o.shapes == {"x": (1, 3)} and o.profile_ops and o.cooldown_c == 55.0
    assert BenchOptions.preset("default").protocol.min_runs == 100
    # the stop rule: a job's time floor above the preset's cap raises the cap; no preset caps the runs
    o = BenchOptions.from_settings(BenchSettings(preset="quick", min_time_s=5.0))
    assert o.protocol.max_time_s == 5.0 and o.protocol.max_runs == 0
    assert BenchOptions.preset("thorough").protocol.repeats == 3
