"""PyTorch sources: ``package.module:factory`` (+ optional state_dict) -> module, exported to ONNX.

The export uses torch's default (dynamo) exporter with ``external_data=False`` so the model is one file,
a dynamic batch axis on every input and output, and is checked against the PyTorch outputs on the sample.
torch is imported inside functions only.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import ConvertError, describe_failure


def is_factory_spec(text: str) -> bool:
    """``pkg.mod:factory`` (and not an existing file path)."""
    mod, sep, attr = text.partition(":")
    return (
        bool(sep)
        and bool(attr)
        and not Path(text).exists()
        and "/" not in mod
        and mod.replace(".", "").replace("_", "").isalnum()
    )


def load_factory(spec: str, state_dict: str | Path | None = None) -> Any:
    """Import ``package.module:factory``, call it, load the optional state_dict; the module in eval mode."""
    import torch

    mod_name, _, attr = spec.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ConvertError(f"cannot import {mod_name!r} for {spec!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ConvertError(f"{spec!r}: {mod_name} has no callable {attr!r}")
    try:
        model = factory()
    except Exception as exc:
        raise ConvertError(f"{spec!r}: the factory failed ({type(exc).__name__}: {exc})") from None
    if not isinstance(model, torch.nn.Module):
        raise ConvertError(f"{spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    if state_dict is not None:
        try:
            sd = torch.load(str(state_dict), map_location="cpu", weights_only=True)
            model.load_state_dict(sd)
        except Exception as exc:
            raise ConvertError(
                f"cannot load state_dict {state_dict}: {str(exc).splitlines()[0][:200]}"
            ) from None
    return model.eval()


def export_onnx(
    model: Any, sample: np.ndarray, path: Path, *, check: bool = True, atol: float = 1e-3
) -> Path:
    """Export ``model`` (one input) to a single-file ONNX with a dynamic batch axis; verify the outputs."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    x = torch.from_numpy(np.ascontiguousarray(sample[:2] if len(sample) >= 2 else sample))
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with torch.no_grad():
            prog = torch.onnx.export(
                model,
                (x,),
                dynamo=True,
                input_names=["input"],
                output_names=["output"],
                dynamic_shapes=({0: batch},),
                external_data=False,
                verbose=False,
            )
        prog.save(str(path), external_data=False)
    except Exception as exc:
        raise ConvertError(describe_failure("ONNX export failed", exc)) from None
    if check:
        from converter.data import ort_session

        sess = ort_session(path)
        got = sess.run(None, {sess.get_inputs()[0].name: sample[:8]})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(np.ascontiguousarray(sample[:8]))).numpy()
        err = float(np.max(np.abs(got - want)))
        if err > atol * max(1.0, float(np.max(np.abs(want)))):
            raise ConvertError(f"exported ONNX differs from PyTorch (max abs error {err:.3g})")
    return path


def torch_predict(model: Any, x: np.ndarray, batch: int = 64) -> np.ndarray:
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch]))).numpy())
    return np.concatenate(outs)
