"""One small adapter per runtime, chosen by file type. Runtime packages are imported lazily.

* ONNX Runtime: CPU execution provider, intra-op threads, graph optimization level.
* LiteRT: ``ai_edge_litert.interpreter``, falling back to ``tflite_runtime.interpreter``; num_threads;
  the XNNPACK delegate is LiteRT's default for float models.

A :class:`Session` exposes its inputs (name, dtype, shape with ``None`` for dynamic dims), binds a set of
input arrays once with :meth:`Session.bind`, and returns a zero-argument ``step`` that runs one inference.
The protocol times only ``step()``, so the harness adds one Python call per inference.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import BenchError
from wire.artifacts import model_format

ORT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int | None, ...]  # None for a dynamic dimension
    quantization: tuple[float, int] = (0.0, 0)


@dataclass
class Session:
    runtime: str
    version: str
    inputs: tuple[InputSpec, ...]
    options: dict[str, str] = field(default_factory=dict)
    _bind: Callable[[dict[str, Any]], Callable[[], Any]] | None = None
    handle: Any = None

    def bind(self, feeds: dict[str, Any]) -> Callable[[], Any]:
        """Set the inputs once; return the zero-argument callable that runs one inference."""
        assert self._bind is not None
        try:
            return self._bind(feeds)
        except BenchError:
            raise
        except Exception as exc:
            raise BenchError(f"{self.runtime} rejected the inputs: {one_line(exc)}") from None


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def runtime_name(path: str | Path) -> str:
    """Which runtime a file needs: 'onnxruntime' for .onnx, 'litert' (or 'tflite-runtime') for .tflite."""
    return "onnxruntime" if model_format(path) == "onnx" else "litert"


def import_runtime(fmt: str) -> tuple[str, Any]:
    """(runtime name, module) for a format, importing it now. BenchError if none is installed."""
    if fmt == "onnx":
        try:
            return "onnxruntime", importlib.import_module("onnxruntime")
        except ImportError:
            raise BenchError("onnxruntime is not installed: pip install onnxruntime") from None
    for name, module in (
        ("litert", "ai_edge_litert.interpreter"),
        ("tflite-runtime", "tflite_runtime.interpreter"),
    ):
        try:
            return name, importlib.import_module(module)
        except ImportError:
            continue
    raise BenchError("no TFLite runtime installed: pip install ai-edge-litert (or tflite-runtime)")


def open_session(
    path: str | Path, *, threads: int = 0, optimization: str = "all", profile_dir: Path | None = None
) -> Session:
    """Load a model. ``threads=0`` leaves the runtime's default. BenchError for a bad file."""
    path = Path(path)
    fmt = model_format(path)
    name, module = import_runtime(fmt)
    if fmt == "onnx":
        return _open_onnx(path, module, threads, optimization, profile_dir)
    return _open_tflite(path, name, module, threads)


def _version(module: Any, name: str) -> str:
    from agent.probes.facts import runtime_versions

    return str(getattr(module, "__version__", "") or runtime_versions().get(name, ""))


def _open_onnx(path: Path, ort: Any, threads: int, optimization: str, profile_dir: Path | None) -> Session:
    if optimization not in ORT_LEVELS:
        raise BenchError(
            f"unknown graph optimization level {optimization!r} (one of {', '.join(ORT_LEVELS)})"
        )
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(0, threads)
    so.inter_op_num_threads = 1
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_LEVELS[optimization])
    so.log_severity_level = 3
    if profile_dir is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_dir / "ort_profile")
    try:
        sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BenchError(f"{path.name}: onnxruntime cannot load the model: {one_line(exc)}") from None
    specs = []
    for node in sess.get_inputs():
        dtype = ORT_DTYPES.get(node.type)
        if dtype is None:
            raise BenchError(f"{path.name}: input {node.name!r} has unsupported type {node.type}")
        shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in node.shape)
        specs.append(InputSpec(node.name, dtype, shape))

    def bind(feeds: dict[str, Any]) -> Callable[[], Any]:
        run = sess.run
        bound = dict(feeds)

        def step() -> Any:
            return run(None, bound)

        return step

    options = {
        "graph_optimization_level": optimization,
        "provider": "CPUExecutionProvider",
        "intra_op_num_threads": str(threads or "default"),
    }
    return Session("onnxruntime", _version(ort, "onnxruntime"), tuple(specs), options, bind, sess)


def _open_tflite(path: Path, name: str, module: Any, threads: int) -> Session:
    try:
        interp = module.Interpreter(model_path=str(path), num_threads=threads if threads > 0 else None)
        interp.allocate_tensors()
    except Exception as exc:
        raise BenchError(f"{path.name}: {name} cannot load the model: {one_line(exc)}") from None
    specs = []
    for d in interp.get_input_details():
        sig = d.get("shape_signature", d["shape"])
        shape = tuple(int(x) if int(x) >= 0 else None for x in sig)
        q = d.get("quantization", (0.0, 0))
        specs.append(InputSpec(d["name"], _np_name(d["dtype"]), shape, (float(q[0]), int(q[1]))))
    index = {d["name"]: d["index"] for d in interp.get_input_details()}

    def bind(feeds: dict[str, Any]) -> Callable[[], Any]:
        details = {d["name"]: d for d in interp.get_input_details()}
        resized = False
        for key, array in feeds.items():
            if tuple(details[key]["shape"]) != tuple(array.shape):
                interp.resize_tensor_input(index[key], list(array.shape), strict=False)
                resized = True
        if resized:
            interp.allocate_tensors()
        for key, array in feeds.items():
            interp.set_tensor(index[key], array)
        return interp.invoke

    options = {"num_threads": str(threads or "default"), "delegate": "xnnpack (default)"}
    return Session(name, _version(module, name), tuple(specs), options, bind, interp)


def _np_name(dtype: Any) -> str:
    import numpy as np

    return np.dtype(dtype).name
