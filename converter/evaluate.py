"""Running an artifact on the host: its outputs on the validation set, latency with a CI, memory, sizes.

Fidelity (what the outputs are compared with, by output kind) is :mod:`converter.fidelity`.
Latency: batch 1; :func:`interleaved_latency` times several artifacts in ``rounds`` interleaved rounds
(one live session at a time), each round timing every artifact for ``budget_s / rounds`` seconds (at least
5 runs, no run cap: a fast model is timed for the whole slice); an artifact's figure is the median of its
per-round medians and its CI the distribution-free order-statistic interval of that median over the
rounds (:func:`median_ci`: 95% nominal, exact coverage stated; 10 rounds give the 2nd..9th of the sorted
round medians, 97.9%). Rounds are the unit of replication: a burst of load from elsewhere on the machine
moves one round, and widens the interval instead of deciding the ranking. Still a host figure.
What is timed is the runtime's own call on inputs converted once (``session.run``, the LiteRT signature
runner): the numpy (de)quantization of int8 TFLite I/O is outside the timing, else it would dominate a
model of tens of microseconds and rank int8 TFLite below what it is.
Memory: the process's peak-RSS growth while the artifact is loaded and runs one batch-1 inference (VmHWM,
reset through /proc/self/clear_refs), the same batch for ONNX and TFLite; Linux only, else None.
"""

from __future__ import annotations

import gc
import gzip
import hashlib
import math
import os
import shutil
import statistics
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from converter.data import Dataset, ort_session
from converter.errors import ConvertError

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]
Step = Callable[[], object]


@dataclass(frozen=True)
class ModelRunner:
    run: Runner  # a batch of float inputs -> the first output as float32 ((de)quantized as needed)
    batched: bool  # whether batch > 1 is allowed
    bind: Callable[[dict[str, np.ndarray]], Step]  # fixed inputs -> one inference, for timing


@dataclass(frozen=True)
class Measurement:
    memory_mb: float | None  # peak-RSS growth, loaded and run at batch 1
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
    """The first output on every sample, batch first, in the model's own shape ([N] becomes [N, 1])."""
    outs = [run(feed) for feed in data.batches(batch if batched else 1)]
    return np.concatenate([o if o.ndim > 1 else o.reshape(-1, 1) for o in outs])


# ---- timing --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyEstimate:
    median_ms: float  # median of the per-round medians
    low_ms: float  # confidence interval of that median over the rounds
    high_ms: float
    rounds: int
    coverage: float  # the interval's exact coverage (order statistics), e.g. 0.979 for 10 rounds


def median_ci(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Distribution-free CI of the median: the k-th smallest and k-th largest values, k as large as keeps
    the coverage 1 - 2 P(Binomial(n, 1/2) < k) >= ``confidence``; with too few values for that, the
    range (coverage 1 - 2^(1-n)). -> (low, high, coverage)."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ConvertError("no timing rounds to summarize")

    def coverage(k: int) -> float:
        return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(k)) / 2.0**n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return xs[k - 1], xs[n - k], coverage(k)


def latency_ms(step: Step, budget_s: float = 0.5, clock=time.perf_counter_ns) -> float:
    """Median of one inference (``step``: inputs already bound) over ``budget_s`` seconds (>= 5 runs, no
    cap on the count: a fast model is timed for the whole budget; 8 bytes a run)."""
    for _ in range(3):
        step()
    times = array("q")
    deadline = clock() + int(budget_s * 1e9)
    while len(times) < 5 or clock() < deadline:
        t0 = clock()
        step()
        times.append(clock() - t0)
    return statistics.median(times) / 1e6


def interleaved_latency(
    paths: dict[str, Path],
    feed: dict[str, np.ndarray],
    *,
    budget_s: float = 2.0,
    rounds: int = 10,
    confidence: float = 0.95,
) -> dict[str, LatencyEstimate]:
    """Host latency of several artifacts, fairly: ``rounds`` rounds, each timing every artifact for
    ``budget_s / rounds`` with one live session at a time (ORT's idle threads spin after a run and would
    slow whatever runs next); per artifact, the median of its round medians and that median's CI over the
    rounds (:func:`median_ci`)."""
    per_round = budget_s / max(1, rounds)
    names = list(feed)
    medians: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(max(1, rounds)):
        for name, path in paths.items():
            model = runner_for(path, names)
            medians[name].append(latency_ms(model.bind(feed), per_round))
            del model
            gc.collect()
    out = {}
    for name, values in medians.items():
        low, high, cov = median_ci(values, confidence)
        out[name] = LatencyEstimate(statistics.median(values), low, high, len(values), cov)
    return out


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


def measure(path: Path, data: Dataset) -> tuple[Measurement, np.ndarray]:
    """Load the artifact and run one batch-1 inference (the memory figure, the same batch for every
    format), then run it on the validation data; returns the measurement and its outputs (compared with
    the reference by :mod:`converter.fidelity`). Latency is timed separately, for all artifacts
    together: :func:`interleaved_latency`."""
    names = list(data.inputs)
    base = _vm("VmRSS")
    tracked = base is not None and _reset_hwm()
    model = runner_for(path, names)
    try:
        model.run({k: v[:1] for k, v in data.inputs.items()})
        peak = _vm("VmHWM") if tracked else None
        outputs = predict(model.run, model.batched, data)
    except ConvertError:
        raise
    except Exception as exc:
        raise ConvertError(f"{path.name}: inference failed ({str(exc).splitlines()[0][:200]})") from None
    memory = max(0.0, peak - base) if (peak is not None and base is not None) else None
    del model
    return (
        Measurement(
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
