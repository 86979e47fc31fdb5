"""Per-operator profiles: ONNX Runtime's profiling trace -> top operators by time share; for LiteRT,
which ops the XNNPACK delegate took (the Python API gives no per-op timing, so mean_ms/share are 0)."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from agent.errors import BenchError
from wire.schema import OpProfile


def parse_ort_trace(trace: list[dict[str, Any]], runs: int, top: int = 15) -> tuple[OpProfile, ...]:
    """Aggregate the ``Node`` kernel-time events of an ORT profiling trace (Chrome trace JSON)."""
    total_us: dict[str, float] = defaultdict(float)
    meta: dict[str, tuple[str, str]] = {}
    for event in trace:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        args = event.get("args", {})
        node = str(event["name"])[: -len("_kernel_time")]
        total_us[node] += float(event.get("dur", 0))
        meta[node] = (str(args.get("op_name", "")), str(args.get("provider", "")))
    grand = sum(total_us.values())
    if grand <= 0:
        return ()
    ranked = sorted(total_us.items(), key=lambda kv: kv[1], reverse=True)[:top]
    return tuple(
        OpProfile(
            op_type=meta[node][0],
            node=node,
            mean_ms=us / 1000.0 / max(runs, 1),
            share=us / grand,
            provider=meta[node][1],
        )
        for node, us in ranked
    )


def profile_onnx(model: Path, threads: int, feeds: dict[str, Any], runs: int = 50) -> tuple[OpProfile, ...]:
    from agent.measure.runtimes import open_session

    with tempfile.TemporaryDirectory(prefix="edgebench-prof-") as tmp:
        session = open_session(model, threads=threads, profile_dir=Path(tmp))
        step = session.bind(feeds)
        for _ in range(runs):
            step()
        trace_path = session.handle.end_profiling()
        try:
            trace = json.loads(Path(trace_path).read_text())
        except (OSError, ValueError) as exc:
            raise BenchError(f"cannot read the onnxruntime profile: {exc}") from None
    return parse_ort_trace(trace, runs)


def delegated_ops(ops: list[dict[str, Any]]) -> tuple[OpProfile, ...]:
    """From ``Interpreter._get_ops_details()``: each original op, with provider "XNNPACK delegate" when a
    DELEGATE node covers it (walked back from the delegate's outputs to its inputs), else "CPU kernels"."""
    producer = {}
    for op in ops:
        if op["op_name"] != "DELEGATE":
            for t in op["outputs"]:
                producer[int(t)] = op
    taken: set[int] = set()
    for d in (op for op in ops if op["op_name"] == "DELEGATE"):
        stop = {int(t) for t in d["inputs"]}
        todo = [int(t) for t in d["outputs"]]
        seen: set[int] = set()
        while todo:
            t = todo.pop()
            if t in seen or t in stop or t not in producer:
                continue
            seen.add(t)
            op = producer[t]
            taken.add(op["index"])
            todo.extend(int(x) for x in op["inputs"] if int(x) >= 0)
    return tuple(
        OpProfile(
            op_type=op["op_name"],
            node=f"op{op['index']}",
            mean_ms=0.0,
            share=0.0,
            provider="XNNPACK delegate" if op["index"] in taken else "CPU kernels",
        )
        for op in ops
        if op["op_name"] != "DELEGATE"
    )


def profile_tflite(interpreter: Any) -> tuple[OpProfile, ...]:
    getter = getattr(interpreter, "_get_ops_details", None)
    if getter is None:
        return ()
    try:
        return delegated_ops(getter())
    except Exception:
        return ()
