"""Fidelity of an artifact against the fp32 reference, a quick host latency, memory and sizes.

Fidelity (on the validation set): accuracy when labels exist (percent), top-1 agreement with the reference
(percent of samples with the same argmax), max/mean absolute error and cosine similarity of the first
output (flattened, float32). Latency: batch 1, a few warm-ups, then the median of timed runs for about
``budget_s`` seconds (5-200 runs) with all host cores; :func:`interleaved_latency` times several
artifacts in interleaved rounds (lowest per-round median). Still a host figure, for ranking only.
What is timed is the runtime's own call on inputs converted once (``session.run``, the LiteRT signature
runner): the numpy (de)quantization of int8 TFLite I/O is outside the timing, else it would dominate a
model of tens of microseconds and rank int8 TFLite below what it is.
Memory: the process's peak-RSS growth while the artifact is loaded and run (VmHWM, reset through
/proc/self/clear_refs), Linux only, else None.
"""

from __future__ import annotations

import gc
import gzip
import hashlib
import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from converter.data import Dataset, ort_session
from converter.errors import ConvertError
from wire.manifest import Fidelity

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]
Step = Callable[[], object]


@dataclass(frozen=True)
class ModelRunner:
    run: Runner  # a batch of float inputs -> the first output as float32 ((de)quantized as needed)
    batched: bool  # whether batch > 1 is allowed
    bind: Callable[[dict[str, np.ndarray]], Step]  # fixed inputs -> one inference, for timing


@dataclass(frozen=True)
class Measurement:
    fidelity: Fidelity
    memory_mb: float | None
    size_bytes: int
    gzip_bytes: int
    sha256: str


def threads() -> int:
    return os.cpu_count() or 1


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def gzip_size(path: Path) -> int:
    class _Count:
        n = 0

        def write(self, b):
            self.n += len(b)

        def flush(self):
            pass

    counter = _Count()
    with open(path, "rb") as src, gzip.GzipFile(fileobj=counter, mode="wb", mtime=0) as gz:  # type: ignore[arg-type]
        shutil.copyfileobj(src, gz)
    return counter.n


# ---- runners -------------------------------------------------------------------------------------------
def onnx_runner(path: Path) -> ModelRunner:
    sess = ort_session(path, threads())
    dynamic = all(not isinstance(i.shape[0], int) or i.shape[0] != 1 for i in sess.get_inputs())
    out = sess.get_outputs()[0].name

    def bind(feed: dict[str, np.ndarray]) -> Step:
        return partial(sess.run, None, dict(feed))

    return ModelRunner(lambda feed: np.asarray(sess.run([out], feed)[0], dtype=np.float32), dynamic, bind)


def tflite_runner(path: Path, input_names: list[str]) -> ModelRunner:
    """LiteRT signature runner; inputs mapped by position; int8/uint8 I/O (quantized) handled."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interp = Interpreter(model_path=str(path), num_threads=threads())
        interp.allocate_tensors()
    except Exception as exc:
        raise ConvertError(f"{path.name}: LiteRT cannot load it ({str(exc).splitlines()[0][:200]})") from None
    sigs = interp.get_signature_list()
    key = next(iter(sigs))
    runner = interp.get_signature_runner(key)
    in_details = runner.get_input_details()
    out_details = runner.get_output_details()
    tfl_inputs = sigs[key]["inputs"]
    out_name = sigs[key]["outputs"][0]

    def tensors(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = {}
        for tname, oname in zip(tfl_inputs, input_names, strict=False):
            x = feed[oname]
            det = in_details[tname]
            if det["dtype"] in (np.int8, np.uint8):
                scale, zero = det["quantization"]
                info = np.iinfo(det["dtype"])
                x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(det["dtype"])
            args[tname] = np.ascontiguousarray(x.astype(det["dtype"], copy=False))
        return args

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        y = runner(**tensors(feed))[out_name]
        det = out_details[out_name]
        if det["dtype"] in (np.int8, np.uint8):
            scale, zero = det["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return np.array(y, dtype=np.float32)  # a copy: a view into the interpreter blocks set_tensor

    def bind(feed: dict[str, np.ndarray]) -> Step:
        return partial(runner, **tensors(feed))  # inputs converted once; set, invoke, copy out in C++

    return ModelRunner(run, False, bind)


def runner_for(path: Path, input_names: list[str]) -> ModelRunner:
    return tflite_runner(path, input_names) if path.suffix == ".tflite" else onnx_runner(path)


def predict(run: Runner, batched: bool, data: Dataset, batch: int = 64) -> np.ndarray:
    outs = [run(feed) for feed in data.batches(batch if batched else 1)]
    return np.concatenate([o.reshape(len(o), -1) if o.ndim > 1 else o.reshape(-1, 1) for o in outs])


# ---- metrics -------------------------------------------------------------------------------------------
def fidelity(reference: np.ndarray, outputs: np.ndarray, labels: np.ndarray | None) -> Fidelity:
    if reference.shape != outputs.shape:
        raise ConvertError(f"output shape {outputs.shape} differs from the reference's {reference.shape}")
    ref = reference.astype(np.float64)
    out = outputs.astype(np.float64)
    err = np.abs(ref - out)
    denom = np.linalg.norm(ref) * np.linalg.norm(out)
    cosine = float(np.dot(ref.ravel(), out.ravel()) / denom) if denom > 0 else float(np.allclose(ref, out))
    agree = float(np.mean(ref.argmax(1) == out.argmax(1)) * 100) if ref.shape[1] > 1 else None
    acc = ref_acc = delta = None
    if labels is not None and ref.shape[1] > 1:
        acc = float(np.mean(out.argmax(1) == labels) * 100)
        ref_acc = float(np.mean(ref.argmax(1) == labels) * 100)
        delta = acc - ref_acc
    return Fidelity(
        accuracy=acc,
        reference_accuracy=ref_acc,
        accuracy_delta=delta,
        top1_agreement=agree,
        max_abs_error=float(err.max()),
        mean_abs_error=float(err.mean()),
        cosine=cosine,
    )


def accuracy_drop(fid: Fidelity) -> float:
    """Points lost against the reference: from labels when present, else from top-1 disagreement."""
    if fid.accuracy_delta is not None:
        return 0.0 - fid.accuracy_delta + 0.0
    if fid.top1_agreement is not None:
        return 100.0 - fid.top1_agreement
    return 0.0 if (fid.cosine or 0) > 0.999 else 100.0


def latency_ms(step: Step, budget_s: float = 0.5, clock=time.perf_counter_ns) -> float:
    """Median of one inference (``step``: inputs already bound) over about ``budget_s`` seconds."""
    for _ in range(3):
        step()
    times: list[int] = []
    deadline = clock() + int(budget_s * 1e9)
    while len(times) < 200 and (len(times) < 5 or clock() < deadline):
        t0 = clock()
        step()
        times.append(clock() - t0)
    return statistics.median(times) / 1e6


def interleaved_latency(
    paths: dict[str, Path],
    feed: dict[str, np.ndarray],
    *,
    budget_s: float = 0.5,
    rounds: int = 3,
) -> dict[str, float]:
    """Host latency of several artifacts, fairly: ``rounds`` rounds, each timing every artifact for
    ``budget_s / rounds`` with one live session at a time (ORT's idle threads spin after a run and would
    slow whatever runs next); each artifact's figure is the lowest of its per-round medians, so a burst
    of load from elsewhere on the machine hits one round of one artifact, not the ranking."""
    best: dict[str, float] = {}
    per_round = budget_s / max(1, rounds)
    names = list(feed)
    for _ in range(max(1, rounds)):
        for name, path in paths.items():
            model = runner_for(path, names)
            ms = latency_ms(model.bind(feed), per_round)
            del model
            gc.collect()
            best[name] = min(best.get(name, ms), ms)
    return best


def _vm(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(
    path: Path,
    reference: np.ndarray,
    data: Dataset,
) -> tuple[Measurement, np.ndarray]:
    """Run the artifact on the validation data; returns the measurement and its outputs. (Latency is
    timed separately, for all artifacts together: :func:`interleaved_latency`.)"""
    names = list(data.inputs)
    base = _vm("VmRSS")
    tracked = base is not None and _reset_hwm()
    model = runner_for(path, names)
    try:
        outputs = predict(model.run, model.batched, data)
    except ConvertError:
        raise
    except Exception as exc:
        raise ConvertError(f"{path.name}: inference failed ({str(exc).splitlines()[0][:200]})") from None
    peak = _vm("VmHWM") if tracked else None
    memory = max(0.0, peak - base) if (peak is not None and base is not None) else None
    del model
    return (
        Measurement(
            fidelity=fidelity(reference, outputs, data.labels),
            memory_mb=memory,
            size_bytes=path.stat().st_size,
            gzip_bytes=gzip_size(path),
            sha256=file_sha256(path),
        ),
        outputs,
    )


def reference_outputs(onnx_path: Path, data: Dataset) -> np.ndarray:
    model = onnx_runner(onnx_path)
    return predict(model.run, model.batched, data)
