"""Optimization passes, registered by name with typed, documented parameters (Olive-style).

A pass takes the current base model (:class:`Model`: an fp32 ONNX file and, when the source is PyTorch, the
torch module) and produces one artifact (:class:`Output`). Passes that change the model itself (pruning,
distillation) also return a new base, which later recipe steps can start from (``"from": "<step name>"``).
Parameters are frozen dataclasses; each field carries ``metadata={"help": ...}``. Heavy packages are
imported inside the pass functions only.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converter.errors import ConvertError

PASS_MODULES = ("onnx_passes", "quantize", "prune", "distill", "tflite")


@dataclass
class Model:
    """A base model: fp32 ONNX (always) and the torch module (when the source is PyTorch)."""

    onnx: Path
    torch: Any = None
    label: str = "fp32"


@dataclass(frozen=True)
class Output:
    path: Path
    format: str  # "onnx" | "tflite"
    precision: str  # fp32, fp16, int8-dynamic, int8-static, int8-full, ...
    model: Model | None = None  # a new base for later steps (pruning, distillation)
    notes: tuple[str, ...] = ()


@dataclass
class Context:
    """What every pass may use: data, directories, the accuracy budget, a logger and the fidelity check."""

    source: Model
    calib: Any  # converter.data.Dataset
    val: Any
    out_dir: Path
    work_dir: Path
    max_accuracy_drop: float
    reference_val: Any  # np.ndarray, fp32 outputs on val
    log: Callable[[str], None] = print
    # artifact -> converter.fidelity.Verdict (its fidelity, the bound it misses or None), for fallbacks
    evaluate: Callable[[Path], Any] | None = None


@dataclass(frozen=True)
class PassSpec:
    name: str
    params: type
    run: Callable[[Context, Model, Any, str], Output]
    summary: str
    needs: tuple[str, ...] = ()


REGISTRY: dict[str, PassSpec] = {}


def register(name: str, params: type, summary: str, needs: tuple[str, ...] = ()):
    def deco(fn):
        REGISTRY[name] = PassSpec(name, params, fn, summary, needs)
        return fn

    return deco


def param(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def load_all() -> dict[str, PassSpec]:
    for mod in PASS_MODULES:
        importlib.import_module(f"converter.passes.{mod}")
    return REGISTRY


def get(name: str) -> PassSpec:
    load_all()
    if name not in REGISTRY:
        raise ConvertError(f"unknown pass {name!r} (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name]


def make_params(name: str, values: dict[str, Any] | None) -> Any:
    """Build a pass's parameter dataclass from plain values, checking names, types and choices."""
    spec = get(name)
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(spec.params)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConvertError(f"pass {name!r}: unknown parameter(s) {unknown} (known: {sorted(fields)})")
    hints = typing.get_type_hints(spec.params)
    out = {}
    for key, value in values.items():
        out[key] = _coerce(name, key, hints[key], value)
    return spec.params(**out)


def _coerce(pass_name: str, key: str, hint: Any, value: Any) -> Any:
    where = f"pass {pass_name!r} parameter {key!r}"
    if typing.get_origin(hint) is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConvertError(f"{where}: {value!r} is not one of {list(choices)}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConvertError(f"{where}: expected true/false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConvertError(f"{where}: expected a number, got {value!r}")
        try:
            return hint(value)
        except (TypeError, ValueError):
            raise ConvertError(f"{where}: expected {hint.__name__}, got {value!r}") from None
    if hint is str:
        return str(value)
    return value


def params_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params)


def describe() -> str:
    """Human-readable list of passes and their parameters (for `edgebench convert --list-passes`)."""
    lines = []
    for name, spec in sorted(load_all().items()):
        lines.append(f"{name}: {spec.summary}" + (f" [needs {', '.join(spec.needs)}]" if spec.needs else ""))
        hints = typing.get_type_hints(spec.params)
        for f in dataclasses.fields(spec.params):
            hint = hints[f.name]
            kind = (
                "|".join(map(str, typing.get_args(hint)))
                if typing.get_origin(hint) is typing.Literal
                else getattr(hint, "__name__", str(hint))
            )
            lines.append(f"    {f.name} ({kind}, default {f.default!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)


def need_torch(ctx: Context, base: Model, pass_name: str) -> Any:
    if base.torch is None:
        raise ConvertError(
            f"pass {pass_name!r} needs a PyTorch source (give MODEL as package.module:factory); "
            "this source is ONNX only"
        )
    return base.torch


def onnx_op_types(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
