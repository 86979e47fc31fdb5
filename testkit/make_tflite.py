"""Regenerate tests/data/tiny_mlp.tflite (committed, ~5 KB) with litert-torch.

    python testkit/make_tflite.py

A 16 -> 32 -> 10 MLP with fixed seed, batch 1, float32; the same shape as make_mlp_onnx.
"""

from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "tiny_mlp.tflite"


def main() -> None:
    import litert_torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)).eval()
    edge = litert_torch.convert(model, (torch.randn(1, 16),))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    edge.export(str(OUT))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
