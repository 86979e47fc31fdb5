"""Train the shipped digits CNN and write its files next to this script.

    python -m converter.models.train_digits [--epochs 12]

Deterministic (seeded), ~1 minute on 2 CPU cores. Writes digits_cnn.pt (state_dict), digits_cnn.onnx
(dynamic batch, checked against PyTorch), digits_calib.npz (256 training images) and digits_val.npz
(540 held-out images), then prints the validation accuracy.
"""

from __future__ import annotations

import argparse

import numpy as np


def train(epochs: int = 12, seed: int = 0) -> float:
    import torch
    from torch import nn

    from converter.models import digits
    from converter.pytorch import export_onnx, torch_predict

    torch.manual_seed(seed)
    x_tr, y_tr, x_val, y_val = digits.load_digits_arrays(seed)
    model = digits.build()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    rng = np.random.default_rng(seed)
    for _epoch in range(epochs):
        model.train()
        for idx in np.array_split(rng.permutation(len(xt)), len(xt) // 64):
            xb = xt[idx]
            shift = rng.integers(-1, 2, size=2)  # light augmentation: +-1 pixel shifts
            xb = torch.roll(xb, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
            loss = nn.functional.cross_entropy(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    acc = float(np.mean(torch_predict(model, x_val).argmax(1) == y_val) * 100)
    torch.save(model.state_dict(), digits.STATE_DICT)
    export_onnx(model, x_val[:8], digits.ONNX)
    np.savez_compressed(digits.CALIB, x=x_tr[:256], y=y_tr[:256])
    np.savez_compressed(digits.VAL, x=x_val, y=y_val)
    return acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    print(f"validation accuracy: {train(args.epochs):.2f}%")


if __name__ == "__main__":
    main()
