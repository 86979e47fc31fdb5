"""Agent idle memory: start `edgebench agent run` against a local mosquitto, let it sit idle (connected,
heartbeats), then read VmRSS / VmHWM of the agent process from /proc and check that no runtime library
(onnxruntime, LiteRT) is mapped. Then run one tiny job (measured in a fresh worker process, as the service
does) and read the agent's RSS again. Target: idle RSS <= 40 MB with no runtime imported. One run.

    python bench/agent_idle_rss.py [--idle-s 5]
"""

from __future__ import annotations

import argparse
import signal
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

RUNTIME_LIBS = ("onnxruntime", "ai_edge_litert", "tflite_runtime", "_pywrap")


def proc_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


def runtime_mapped(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted({line.split()[-1] for line in maps.splitlines() if any(r in line for r in RUNTIME_LIBS)})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle-s", type=float, default=5.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgebench-rss-"))
    key, pub = generate_keypair(tmp / "keys")
    with MosquittoBroker(workdir=tmp / "broker") as broker, FleetPeer(broker.host, broker.port) as peer:
        config = tmp / "agent.toml"
        config.write_text(
            f'device_id = "rss"\ndata_dir = "{tmp / "data"}"\n[broker]\nhost = "{broker.host}"\n'
            f'port = {broker.port}\n[jobs]\ntrusted_keys = ["{pub}"]\n[heartbeat]\ninterval_s = 1\n'
        )
        agent = subprocess.Popen([sys.executable, "-m", "edgebench", "agent", "run", "--config", str(config)],
                                 cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            if not wait_until(lambda: any(s.reason == "birth" for s in peer.statuses), 30):
                raise SystemExit("agent did not come online")
            time.sleep(args.idle_s)
            idle, idle_libs = proc_mb(agent.pid), runtime_mapped(agent.pid)
            from testkit.models import make_mlp_onnx

            ref = peer.add_artifact(make_mlp_onnx(tmp / "tiny.onnx"))
            from wire.schema import BenchSettings

            job = peer.make_job(
                [ref], "device:rss", BenchSettings(preset="quick", min_runs=5, min_time_s=0.05)
            )
            peer.send_job(job, key, "rss")
            wait_until(lambda: peer.event(job.job_id, "done") or peer.event(job.job_id, "failed"), 120)
            time.sleep(1)
            after, after_libs = proc_mb(agent.pid), runtime_mapped(agent.pid)
            state = peer.states(job.job_id)[-1] if peer.states(job.job_id) else "none"
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=60)
    print(f"agent idle ({args.idle_s:g} s, connected, heartbeats): VmRSS {idle['VmRSS']:.1f} MB "
          f"(anon {idle['RssAnon']:.1f}, file {idle['RssFile']:.1f}), VmHWM {idle['VmHWM']:.1f} MB; "
          f"runtime libraries mapped: {idle_libs or 'none'}")  # fmt: skip
    print(f"after one job ({state}): VmRSS {after['VmRSS']:.1f} MB, VmHWM {after['VmHWM']:.1f} MB; "
          f"runtime libraries mapped: {after_libs or 'none'}")  # fmt: skip
    print(f"target idle <= 40 MB: {'met' if idle['VmRSS'] <= 40 else 'NOT met'} "
          f"(ratio {idle['VmRSS'] / 40:.2f} of the budget)")  # fmt: skip


if __name__ == "__main__":
    main()
