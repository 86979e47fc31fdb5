"""Model delivery time over MQTT on loopback: a signed job names a fresh N MB artifact; the agent (a real
`edgebench agent run` process) asks for its chunks, a paho peer serves them (QoS 1), the agent assembles,
verifies the sha256 and caches it. Measured from the job's "fetching" event to its "running" event (the
artifact is verified and in the cache), and from sending the job. Each run uses new random bytes (no
cache hit). The payload is not a real model, so the measurement itself fails fast; only delivery counts.

    python bench/model_delivery.py [--mb 10] [--runs 3] [--chunk-kb 256]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgebench.broker import MosquittoBroker  # noqa: E402
from testkit.fleet_peer import FleetPeer, wait_until  # noqa: E402
from wire.signing import generate_keypair  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chunk-kb", type=int, default=256)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgebench-delivery-"))
    key, pub = generate_keypair(tmp / "keys")
    times, totals = [], []
    with MosquittoBroker(workdir=tmp / "broker") as broker, FleetPeer(broker.host, broker.port) as peer:
        config = tmp / "agent.toml"
        config.write_text(
            f'device_id = "dl"\ndata_dir = "{tmp / "data"}"\n[broker]\nhost = "{broker.host}"\n'
            f'port = {broker.port}\n[jobs]\ntrusted_keys = ["{pub}"]\nchunk_size = {args.chunk_kb * 1024}\n'
        )
        agent = subprocess.Popen([sys.executable, "-m", "edgebench", "agent", "run", "--config", str(config)],
                                 cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            if not wait_until(lambda: any(s.reason == "birth" for s in peer.statuses), 30):
                raise SystemExit("agent did not come online")
            for i in range(args.runs):
                model = tmp / f"model{i}.onnx"
                model.write_bytes(os.urandom(int(args.mb * 2**20)))
                ref = peer.add_artifact(model)
                job = peer.make_job([ref], "device:dl")
                sent = time.monotonic()
                peer.send_job(job, key, "dl")
                marks: dict[str, float] = {}

                def seen(state: str, job_id: str = job.job_id, marks: dict[str, float] = marks) -> bool:
                    if state not in marks and peer.event(job_id, state):
                        marks[state] = time.monotonic()
                    return state in marks

                ok = wait_until(lambda: (seen("fetching") and seen("running")) or seen("failed"), 300, 0.005)
                if not ok or "running" not in marks:
                    raise SystemExit(f"run {i}: delivery failed: {peer.states(job.job_id)}")
                times.append(marks["running"] - marks["fetching"])
                totals.append(marks["running"] - sent)
                requests = [r for r in peer.chunk_requests if r.sha256 == ref.sha256]
                print(f"run {i}: {args.mb:g} MB in {times[-1]:.2f} s "
                      f"(job sent -> running {totals[-1]:.2f} s), {len(requests)} chunk request(s), "
                      f"{args.mb / times[-1]:.1f} MB/s")  # fmt: skip
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=60)
    print(f"median over {args.runs} runs: {statistics.median(times):.2f} s fetch+verify+cache "
          f"({args.mb / statistics.median(times):.1f} MB/s), "
          f"{statistics.median(totals):.2f} s from job sent; "
          f"chunk {args.chunk_kb} KB, QoS 1, loopback, mosquitto {broker.port}")  # fmt: skip


if __name__ == "__main__":
    main()
