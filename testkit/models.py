"""Tiny ONNX models built in code for tests (needs `onnx`, a dev/converter dependency)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _init(name: str, array: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(array.astype(np.float32), name)


def _save(graph, path: Path, opset: int = 17) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgebench-tests"
    )
    model.ir_version = 9
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_mlp_onnx(
    path: Path, in_features: int = 16, hidden: int = 32, classes: int = 10, seed: int = 0
) -> Path:
    """x[batch, in_features] -> Gemm -> Relu -> Gemm -> logits[batch, classes], dynamic batch."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits = [
        _init("w1", rng.standard_normal((hidden, in_features)) * 0.3),
        _init("b1", rng.standard_normal(hidden) * 0.1),
        _init("w2", rng.standard_normal((classes, hidden)) * 0.3),
        _init("b2", rng.standard_normal(classes) * 0.1),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h"], ["hr"], name="relu1"),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"], transB=1, name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", in_features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    return _save(graph, path)


def make_cnn_onnx(path: Path, channels: int = 1, size: int = 16, classes: int = 10, seed: int = 0) -> Path:
    """x[batch, C, H, W] -> Conv3x3 -> Relu -> GlobalAveragePool -> Flatten -> Gemm, dynamic batch."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    filters = 8
    inits = [
        _init("cw", rng.standard_normal((filters, channels, 3, 3)) * 0.3),
        _init("cb", rng.standard_normal(filters) * 0.1),
        _init("fw", rng.standard_normal((classes, filters)) * 0.3),
        _init("fb", rng.standard_normal(classes) * 0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c"], ["cr"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["cr"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    return _save(graph, path)


def make_two_input_onnx(path: Path, features: int = 8) -> Path:
    """a[batch, F] (float32) and b[batch, F] (float32) -> Add -> out; a multi-input model."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Add", ["a", "b"], ["out"], name="add")]
    graph = helper.make_graph(
        nodes,
        "two_inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", features]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", features]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", features])],
    )
    return _save(graph, path)
