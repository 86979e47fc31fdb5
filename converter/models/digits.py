"""A small CNN for scikit-learn's `digits` (8x8 images upsampled 2x to 16x16, one channel, values 0-1).

Shipped files (made by ``python -m converter.models.train_digits``): ``digits_cnn.onnx`` (dynamic batch),
``digits_cnn.pt`` (state_dict), ``digits_calib.npz`` and ``digits_val.npz`` (``x`` float32 [N,1,16,16],
``y`` int64). ``pretrained()`` is the PyTorch factory (``converter.models.digits:pretrained``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).parent
ONNX = HERE / "digits_cnn.onnx"
STATE_DICT = HERE / "digits_cnn.pt"
CALIB = HERE / "digits_calib.npz"
VAL = HERE / "digits_val.npz"
FACTORY = "converter.models.digits:pretrained"


class DigitsPaths(NamedTuple):
    onnx: Path
    factory: str  # package.module:factory returning the trained torch module
    calib: Path
    val: Path


def digits_paths() -> DigitsPaths:
    return DigitsPaths(ONNX, FACTORY, CALIB, VAL)


def build() -> Any:
    """The untrained architecture (torch imported lazily)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 4x4
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def pretrained() -> Any:
    import torch

    model = build()
    model.load_state_dict(torch.load(str(STATE_DICT), map_location="cpu", weights_only=True))
    return model.eval()


def load_digits_arrays(seed: int = 0):
    """sklearn digits -> (x_train, y_train, x_val, y_val): float32 [N,1,16,16] in [0,1], int64 labels."""
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    x = x.repeat(2, axis=1).repeat(2, axis=2)[:, None]  # nearest 2x upsampling: 16x16
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_val = 540
    return x[n_val:], y[n_val:], x[:n_val], y[:n_val]
