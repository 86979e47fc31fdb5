"""Does the agent's harness slow what it measures? Compare the agent's p50 with a bare loop.

    python bench/harness_overhead.py [--rounds 3] [--min-time 3]

Builds a ~1 ms and a ~20 ms model (ONNX with `onnx`, TFLite with litert-torch: host-side tools), then in
one run alternates, per model: the agent (`run_benchmark`, fresh process, 1 thread) and a bare loop in a
fresh process (`session.run` / `interpreter.invoke` between two perf_counter_ns reads, 1 thread, same
warmup). Prints the median p50s, the median of per-round ratios agent/bare and the ratio of the best
p50s. Target: within 1.02.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BARE = r"""
import json, sys, time
import numpy as np
path, n, warm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
if path.endswith(".onnx"):
    import onnxruntime as ort
    so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in i.shape]
    feeds = {i.name: rng.standard_normal(shape).astype(np.float32)}
    def step():
        s.run(None, feeds)
else:
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=path, num_threads=1); it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], rng.standard_normal(d["shape"]).astype(np.float32))
    step = it.invoke
for _ in range(warm):
    step()
clock = time.perf_counter_ns
samples = []
for _ in range(n):
    t0 = clock(); step(); t1 = clock()
    samples.append(t1 - t0)
samples.sort()
print(json.dumps({"p50_ms": samples[len(samples) // 2] / 1e6, "n": n}))
"""


def build_onnx(path: Path, kind: str) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "mlp":  # ~1 ms: 4 x (1024x1024 MatMul + Add + Relu)
        width, depth = 1024, 4
        nodes, inits, prev = [], [], "x"
        for k in range(depth):
            w = (rng.standard_normal((width, width)) / 32).astype(np.float32)
            b = np.zeros(width, np.float32)
            inits += [numpy_helper.from_array(w, f"w{k}"), numpy_helper.from_array(b, f"b{k}")]
            nodes += [
                helper.make_node("MatMul", [prev, f"w{k}"], [f"m{k}"]),
                helper.make_node("Add", [f"m{k}", f"b{k}"], [f"a{k}"]),
                helper.make_node("Relu", [f"a{k}"], [f"h{k}"]),
            ]
            prev = f"h{k}"
        inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])
        out = helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, width])
    else:  # ~20 ms: 2 x (3x3 conv 64->64 on 56x56 + Relu)
        nodes, inits, prev = [], [], "x"
        for k in range(2):
            w = (rng.standard_normal((64, 64, 3, 3)) / 24).astype(np.float32)
            inits += [
                numpy_helper.from_array(w, f"cw{k}"),
                numpy_helper.from_array(np.zeros(64, np.float32), f"cb{k}"),
            ]
            nodes += [
                helper.make_node("Conv", [prev, f"cw{k}", f"cb{k}"], [f"c{k}"], pads=[1, 1, 1, 1]),
                helper.make_node("Relu", [f"c{k}"], [f"r{k}"]),
            ]
            prev = f"r{k}"
        inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 56, 56])
        out = helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 64, 56, 56])
    graph = helper.make_graph(nodes, kind, [inp], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def build_tflite(path: Path, kind: str) -> Path:
    import litert_torch
    import torch

    torch.manual_seed(0)
    if kind == "mlp":
        layers = []
        for _ in range(4):
            layers += [torch.nn.Linear(1024, 1024), torch.nn.ReLU()]
        model, example = torch.nn.Sequential(*layers).eval(), torch.randn(1, 1024)
    else:
        model = torch.nn.Sequential(
            torch.nn.Conv2d(64, 64, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(64, 64, 3, padding=1),
            torch.nn.ReLU(),
        ).eval()
        example = torch.randn(1, 64, 56, 56)
    litert_torch.convert(model, (example,)).export(str(path))
    return path


def agent_p50(path: Path, min_time: float) -> float:
    from agent.measure.bench import BenchOptions, run_benchmark
    from agent.probes.facts import device_info

    options = BenchOptions.preset("default", threads=(1,)).with_protocol(
        min_runs=200, min_time_s=min_time, max_time_s=min_time * 4, keep_samples=False
    )
    (rec,) = run_benchmark(path, options, device=device_info("harness-overhead"))
    if rec.status != "ok":
        raise SystemExit(f"agent failed on {path.name}: {rec.error}")
    return rec.latency.p50_ms  # type: ignore[union-attr]


def bare_p50(path: Path, n: int, warm: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", BARE, str(path), str(n), str(warm)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["p50_ms"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=3.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        models = [
            build_onnx(d / "mlp_1ms.onnx", "mlp"),
            build_onnx(d / "conv_20ms.onnx", "conv"),
            build_tflite(d / "mlp_1ms.tflite", "mlp"),
            build_tflite(d / "conv_20ms.tflite", "conv"),
        ]
        print(f"{'model':<18} {'agent p50 ms':>13} {'bare p50 ms':>12} {'ratio':>7} {'best/best':>9}  rounds")
        for path in models:
            first = bare_p50(path, n=20, warm=5)
            n = max(200, int(args.min_time * 1000 / max(first, 1e-3)))
            agents, bares = [], []
            for r in range(args.rounds):  # ABBA order so that drifting machine load hits both alike
                order = ("agent", "bare") if r % 2 == 0 else ("bare", "agent")
                for who in order:
                    if who == "agent":
                        agents.append(agent_p50(path, args.min_time))
                    else:
                        bares.append(bare_p50(path, n=n, warm=max(20, n // 10)))
            ratios = [a / b for a, b in zip(agents, bares, strict=True)]
            detail = ", ".join(f"{r:.3f}" for r in ratios)
            print(
                f"{path.name:<18} {statistics.median(agents):>13.4f} {statistics.median(bares):>12.4f} "
                f"{statistics.median(ratios):>7.3f} {min(agents) / min(bares):>9.3f}  [{detail}]",
                flush=True,
            )


if __name__ == "__main__":
    main()
