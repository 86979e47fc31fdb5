"""Shared PyTorch training loop for fine-tuning (pruning) and knowledge distillation (torch lazily imported).

Loss: ``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, labels)``;
without labels it is the distillation term alone; without a teacher it is cross-entropy alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from converter.data import Dataset
from converter.errors import ConvertError


def teacher_logits(onnx_path: Path, data: Dataset) -> np.ndarray:
    from converter.evaluate import reference_outputs

    return reference_outputs(onnx_path, data)


def train(
    model: Any,
    data: Dataset,
    *,
    teacher: np.ndarray | None,
    epochs: int,
    lr: float,
    temperature: float = 4.0,
    alpha: float = 0.7,
    batch: int = 32,
    seed: int = 0,
    hook: Callable[[Any], None] | None = None,
) -> Any:
    import torch
    from torch.nn import functional as F

    if len(data.inputs) != 1:
        raise ConvertError("training passes support single-input models only")
    if teacher is None and data.labels is None:
        raise ConvertError("fine-tuning needs labels or a teacher (calibration data has no labels)")
    torch.manual_seed(seed)
    x = torch.from_numpy(next(iter(data.inputs.values())))
    y = None if data.labels is None else torch.from_numpy(data.labels)
    t = None if teacher is None else torch.from_numpy(teacher.reshape(len(x), -1).astype(np.float32))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(epochs):
        for idx in np.array_split(rng.permutation(len(x)), max(1, len(x) // batch)):
            idx_t = torch.from_numpy(idx)
            out = model(x[idx_t])
            loss = torch.zeros(())
            if t is not None:
                soft = F.kl_div(
                    F.log_softmax(out / temperature, dim=1),
                    F.softmax(t[idx_t] / temperature, dim=1),
                    reduction="batchmean",
                )
                loss = loss + (alpha if y is not None else 1.0) * temperature**2 * soft
            if y is not None:
                loss = loss + ((1 - alpha) if t is not None else 1.0) * F.cross_entropy(out, y[idx_t])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if hook:
                hook(model)
    return model.eval()


def prunable_layers(model: Any) -> list[tuple[str, Any]]:
    from torch import nn

    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Linear))]


def last_linear(model: Any) -> Any:
    from torch import nn

    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return layers[-1] if layers else None
