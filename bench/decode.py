"""Decode-only speed: the reference decoder (``ResultRecord.from_json``: wire.codec.load_json + decode) vs
the collector's fast path (collector.messages.fastcodec.decode_json, msgspec) on one realistic result
record, as bytes (what MQTT delivers). Interleaved rounds: each round times every decoder in turn
(the order alternates), so a shared, busy machine slows them alike; the ratio is taken per round.

    python bench/decode.py                     # 100 latency samples in the record, 15 rounds
    python bench/decode.py --samples 0         # the record bench/ingest.py publishes (no samples)
    python bench/decode.py --also /tmp/old.py  # a third contender: a file defining decode_json(cls, payload)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from collector.messages.fastcodec import decode_json  # noqa: E402
from testkit.records import make_record  # noqa: E402
from wire.schema import ResultRecord  # noqa: E402


def realistic_payload(samples: int) -> bytes:
    """The benchmark record of testkit.records, with ``samples`` kept latency samples (the agent
    keeps them by default: min_runs 100), three repeat medians and a job id."""
    record = make_record(job_id="0d8f1c6e-5d6b-4c0e-9d4e-6a1f2b3c4d5e")
    rng = random.Random(1)
    latency = dataclasses.replace(
        record.latency,
        samples_ms=tuple(round(rng.uniform(1.4, 1.6), 6) for _ in range(samples)) if samples else None,
        repeat_medians_ms=(1.49, 1.5, 1.51),
    )
    return dataclasses.replace(record, latency=latency).to_json().encode()


def _load(path: str) -> Callable[[type, bytes], object]:
    spec = importlib.util.spec_from_file_location("decode_contender", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.decode_json


def _per_call_us(decode: Callable[[bytes], object], payload: bytes, number: int) -> float:
    t0 = time.perf_counter()
    for _ in range(number):
        decode(payload)
    return (time.perf_counter() - t0) / number * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--samples", type=int, default=100, help="latency samples kept in the record (default 100)"
    )
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    ap.add_argument("--number", type=int, default=200, help="decodes per decoder per round (default 200)")
    ap.add_argument("--also", metavar="PATH", help="a file defining decode_json(cls, payload): timed too")
    args = ap.parse_args()

    payload = realistic_payload(args.samples)
    expected = ResultRecord.from_json(payload)
    contenders: dict[str, Callable[[bytes], object]] = {
        "reference": ResultRecord.from_json,
        "fast path": lambda p: decode_json(ResultRecord, p),
    }
    if args.also:
        other = _load(args.also)
        contenders[f"also ({Path(args.also).name})"] = lambda p: other(ResultRecord, p)
    for name, decode in contenders.items():
        if decode(payload) != expected:
            raise SystemExit(f"{name} decodes the record differently")
        _per_call_us(decode, payload, max(1, args.number // 10))  # warm up (caches, first compilation)

    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(_per_call_us(contenders[name], payload, args.number))

    print(f"ResultRecord payload: {len(payload)} bytes, {args.samples} latency samples; "
          f"{args.rounds} interleaved rounds x {args.number} decodes per decoder")  # fmt: skip
    ref = times["reference"]
    for name in names:
        t = times[name]
        ratios = sorted(a / b for a, b in zip(ref, t, strict=True))
        print(f"  {name:24} median {statistics.median(t):8.1f} us/decode  (min {min(t):.1f})   "
              f"reference/this: median {statistics.median(ratios):5.2f}x "
              f"(min {ratios[0]:.2f}, max {ratios[-1]:.2f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
