"""Model inputs: generated from the model's own metadata, or read from .npy / .npz files.

Dynamic dimensions: the first one is the batch (``batch``), any other must be set with
``--shape name=1x3x224x224`` (:func:`parse_shape`). Data files must match the model's names and shapes;
every mismatch is a :class:`BenchError` that says what was expected.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from agent.errors import BenchError
from agent.measure.runtimes import InputSpec


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """'name=1x3x224x224' -> ('name', (1, 3, 224, 224))."""
    name, sep, dims = text.partition("=")
    name = name.strip()
    if not sep or not name or not dims.strip():
        raise BenchError(f"--shape {text!r}: expected NAME=DxDxD, e.g. input=1x3x224x224")
    try:
        shape = tuple(int(d) for d in dims.lower().replace(",", "x").split("x"))
    except ValueError:
        raise BenchError(f"--shape {text!r}: dimensions must be integers, e.g. input=1x3x224x224") from None
    if any(d <= 0 for d in shape):
        raise BenchError(f"--shape {text!r}: dimensions must be positive")
    return name, shape


def parse_shapes(items: Iterable[str]) -> dict[str, tuple[int, ...]]:
    return dict(parse_shape(item) for item in items)


def fmt_shape(shape: Sequence[int | None]) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


def resolve_shape(spec: InputSpec, shapes: dict[str, tuple[int, ...]], batch: int) -> tuple[int, ...]:
    """The concrete shape to feed: --shape wins, the batch fills a dynamic (or any) first dim."""
    if spec.name in shapes:
        want = shapes[spec.name]
        if len(want) != len(spec.shape):
            raise BenchError(
                f"--shape {spec.name}: {len(want)} dims given, the model's input has {len(spec.shape)} "
                f"({fmt_shape(spec.shape)})"
            )
        for i, (w, d) in enumerate(zip(want, spec.shape, strict=False)):
            if d is not None and d != w and not (i == 0 and d == 1):
                raise BenchError(
                    f"--shape {spec.name}={fmt_shape(want)} does not fit the model's {fmt_shape(spec.shape)}"
                )
        return want
    dims: list[int] = []
    for i, d in enumerate(spec.shape):
        if i == 0 and (d is None or (d == 1 and batch != 1)):
            dims.append(batch)
        elif d is None:
            raise BenchError(
                f"input {spec.name!r} has a dynamic dimension ({fmt_shape(spec.shape)}): "
                f"set it with --shape {spec.name}=" + "x".join(str(x or 1) for x in spec.shape)
            )
        else:
            dims.append(d)
    if not spec.shape and batch != 1:
        raise BenchError(f"input {spec.name!r} is a scalar: it cannot take a batch of {batch}")
    return tuple(dims)


def random_inputs(
    specs: Sequence[InputSpec],
    shapes: dict[str, tuple[int, ...]] | None = None,
    batch: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    import numpy as np

    shapes = shapes or {}
    unknown = set(shapes) - {s.name for s in specs}
    if unknown:
        raise BenchError(
            f"--shape names {', '.join(sorted(unknown))} are not inputs of this model "
            f"(inputs: {', '.join(s.name for s in specs)})"
        )
    rng = np.random.default_rng(seed)
    feeds: dict[str, Any] = {}
    for spec in specs:
        shape = resolve_shape(spec, shapes, batch)
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            array = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            array = rng.integers(0, 2, shape).astype(bool)
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            lo, hi = (max(info.min, -128), min(info.max, 127)) if dtype.itemsize == 1 else (0, 10)
            array = rng.integers(lo, hi + 1, shape, dtype=np.int64).astype(dtype)
        else:
            raise BenchError(f"input {spec.name!r}: cannot generate data of type {spec.dtype}")
        feeds[spec.name] = np.ascontiguousarray(array)
    return feeds


def load_inputs(path: Path, specs: Sequence[InputSpec], batch: int = 1) -> dict[str, Any]:
    """Arrays from a .npy (single-input models) or .npz (one per input name), checked against the model."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise BenchError(f"--inputs {path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            if len(specs) != 1:
                raise BenchError(
                    f"--inputs {path.name}: a .npy holds one array but the model has {len(specs)} inputs "
                    f"({', '.join(s.name for s in specs)}); use a .npz with those names"
                )
            arrays = {specs[0].name: np.load(path, allow_pickle=False)}
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        else:
            raise BenchError(f"--inputs {path.name}: expected a .npy or .npz file")
    except BenchError:
        raise
    except Exception as exc:
        raise BenchError(f"--inputs {path.name}: cannot read: {' '.join(str(exc).split())}") from None
    names = [s.name for s in specs]
    if suffix == ".npz" and set(arrays) != set(names):
        raise BenchError(
            f"--inputs {path.name}: arrays named {', '.join(sorted(arrays)) or '(none)'} "
            f"but the model's inputs are {', '.join(names)}"
        )
    feeds: dict[str, Any] = {}
    for spec in specs:
        array = arrays[spec.name]
        want = np.dtype(spec.dtype)
        if array.dtype != want:
            if array.dtype.kind != want.kind and not (array.dtype.kind in "iu" and want.kind in "iu"):
                raise BenchError(
                    f"--inputs {path.name}: {spec.name} is {array.dtype}, the model wants {want}"
                )
            array = array.astype(want)
        if batch != 1 and array.ndim == len(spec.shape) and array.shape[0] == 1:
            array = np.repeat(array, batch, axis=0)
        if array.ndim != len(spec.shape) or any(
            d is not None and d != a and not (i == 0 and d == 1 and batch != 1)
            for i, (d, a) in enumerate(zip(spec.shape, array.shape, strict=False))
        ):
            raise BenchError(
                f"--inputs {path.name}: {spec.name} has shape {fmt_shape(array.shape)}, "
                f"the model wants {fmt_shape(spec.shape)}"
            )
        feeds[spec.name] = np.ascontiguousarray(array)
    return feeds


def make_inputs(
    specs: Sequence[InputSpec],
    *,
    shapes: dict[str, tuple[int, ...]] | None = None,
    batch: int = 1,
    data: Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    if batch < 1:
        raise BenchError(f"batch must be >= 1, got {batch}")
    if data is not None:
        return load_inputs(data, specs, batch)
    return random_inputs(specs, shapes, batch, seed)
