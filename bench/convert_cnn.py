"""Converter benchmark: ResNet-18 and MobileNetV2 (random init, defined here: no torchvision) and the
shipped digits CNN through the default recipe; prints each artifact's size ratio and latency ratio against
fp32 ONNX Runtime and the accuracy delta, all measured in one run.

    python bench/convert_cnn.py [--models resnet18,mobilenetv2,digits] [--latency-s 5] [--rounds 5]
                                [--out DIR]

Targets (2-core host): ResNet-18 best artifact >= 3.9x smaller and >= 3x faster; MobileNetV2 >= 3.5x
smaller and >= 1.8x faster; digits accuracy drop <= 1.0 point. Random-init models have no labels: their
"drop" is 100 - top-1 agreement with fp32 (reported, not a target, so their budget is off). Their
BatchNorm statistics are re-estimated on random inputs so that the logits are not constant. Latencies
are batch 1, all cores, timed in --rounds interleaved rounds (min over rounds of each round's median;
--latency-s seconds per artifact in all); a shared machine still makes them noisy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGETS = {"resnet18": (3.9, 3.0), "mobilenetv2": (3.5, 1.8)}


def resnet18(num_classes: int = 1000):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    torch.manual_seed(0)
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return _settle_batchnorm(nn.Sequential(*layers))


def mobilenetv2(num_classes: int = 1000):
    import torch
    from torch import nn

    def cbr(cin, cout, k, s, groups=1, act=True):
        mods = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return mods + ([nn.ReLU6()] if act else [])

    class Inverted(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            mods = [] if expand == 1 else cbr(cin, hidden, 1, 1)
            mods += cbr(hidden, hidden, 3, stride, groups=hidden) + cbr(hidden, cout, 1, 1, act=False)
            self.body = nn.Sequential(*mods)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    torch.manual_seed(0)
    settings = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]
    layers: list[nn.Module] = cbr(3, 32, 3, 2)
    cin = 32
    for t, c, n, s in settings:
        for i in range(n):
            layers.append(Inverted(cin, c, s if i == 0 else 1, t))
            cin = c
    layers += [*cbr(cin, 1280, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, num_classes)]
    return _settle_batchnorm(nn.Sequential(*layers))


def _settle_batchnorm(model, batches: int = 8):
    """Random init makes deep nets' activations vanish (constant logits, meaningless agreement): re-estimate
    every BatchNorm's running statistics on random inputs so each layer sees normalized activations."""
    import torch
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(8, 3, 224, 224, generator=gen))
    return model.eval()


def interleaved_latency(result, rounds: int, budget_s: float) -> dict[str, float]:
    """Latency of every ok artifact, timed round-robin (all artifacts in each round) and taken as the
    minimum over rounds of each round's median: load bursts from other processes on a shared machine hit
    one round, not one artifact."""
    from converter.data import load_dataset, onnx_input_specs
    from converter.evaluate import interleaved_latency as timed_rounds

    ref_path = result.reference.path(result.manifest_path)
    specs = onnx_input_specs(ref_path)
    val_path = result.manifest_path.parent.parent / f"{result.manifest_path.parent.name}-val.npz"
    if not val_path.exists():
        from converter.models import digits_paths

        val_path = digits_paths().val
    feed = {k: v[:1] for k, v in load_dataset(val_path, specs).inputs.items()}
    paths = {a.name: a.path(result.manifest_path) for a in result.manifest.artifacts if a.status == "ok"}
    return timed_rounds(paths, feed, budget_s=budget_s * rounds, rounds=rounds)  # budget_s per round


def random_data(path: Path, n: int, seed: int) -> Path:
    x = np.random.default_rng(seed).standard_normal((n, 3, 224, 224)).astype(np.float32)
    np.savez(path, x=x)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenetv2,digits")
    ap.add_argument("--latency-s", type=float, default=5.0, help="timing seconds per artifact, all rounds")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds over all artifacts")
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    from converter.evaluate import accuracy_drop
    from converter.models import digits_paths
    from converter.pipeline import convert

    root = Path(args.out or tempfile.mkdtemp(prefix="edgebench-convert-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    rows, verdicts = [], []
    for name in args.models.split(","):
        t0 = time.perf_counter()
        if name == "digits":
            p = digits_paths()
            spec, calib, val = p.factory, p.calib, p.val
        else:
            spec = f"{__name__}:{name}"
            calib = random_data(root / f"{name}-calib.npz", 32, 1)
            val = random_data(root / f"{name}-val.npz", 16, 2)
        result = convert(
            spec,
            calib=calib,
            val=val,
            out_dir=root / name,
            recipe="default",
            latency_budget_s=0.5,
            # random-init models have no labels and no meaningful accuracy: no budget (agreement is shown)
            max_accuracy_drop=1.0 if name == "digits" else 100.0,
            log=lambda m: print(f"  {m}", flush=True),
        )
        ref = result.reference
        lat = interleaved_latency(result, args.rounds, args.latency_s / args.rounds)
        best = None
        for a in result.manifest.artifacts:
            if a.status != "ok":
                rows.append((name, a.name, "-", "-", "-", "-", f"FAILED: {a.error}"))
                continue
            size_x = ref.size_bytes / a.size_bytes
            speed_x = lat["fp32"] / lat[a.name]
            delta = a.fidelity.accuracy_delta
            drop = accuracy_drop(a.fidelity)
            rows.append(
                (
                    name,
                    a.name,
                    f"{size_x:.2f}x",
                    f"{speed_x:.2f}x",
                    f"{delta:+.2f}" if delta is not None else f"agree {a.fidelity.top1_agreement:.1f}%",
                    f"{a.fidelity.cosine:.4f}",
                    f"{lat[a.name]:.3f} ms"
                    + (" (recommended)" if a.name == result.manifest.recommended else ""),
                )
            )
            if name in TARGETS and size_x >= TARGETS[name][0] and (best is None or speed_x > best[2]):
                best = (a.name, size_x, speed_x)
            if name == "digits" and a.name == result.manifest.recommended:
                verdicts.append(
                    f"digits: recommended {a.name}: drop {drop:.2f} pt "
                    f"({'OK' if drop <= 1.0 else 'MISSED'} <= 1.0)"
                )
        if name in TARGETS:
            smaller, faster = TARGETS[name]
            if best is None:
                verdicts.append(f"{name}: no artifact >= {smaller}x smaller: MISSED")
            else:
                ok = best[2] >= faster
                verdicts.append(
                    f"{name}: best {best[0]}: {best[1]:.2f}x smaller, {best[2]:.2f}x faster "
                    f"(targets {smaller}x / {faster}x): {'OK' if ok else 'MISSED'}"
                )
        print(
            f"  {name} converted in {time.perf_counter() - t0:.0f} s; manifest {result.manifest_path}",
            flush=True,
        )

    print(
        "\n| model | artifact | size ratio | speed ratio (vs fp32 ORT) | accuracy delta (pt) | cosine "
        "| latency |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    for v in verdicts:
        print(v)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
