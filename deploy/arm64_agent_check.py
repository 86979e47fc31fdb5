"""Host side of deploy/test-arm64.sh's agent check (run with the host's python, from the repository).

Starts a mosquitto on the host's loopback (the arm64 root shares the host's network), connects a small
collector stand-in (tests/support/fleet_peer.py: serves model chunks, signs and sends jobs), starts the
agent command given after ``--`` (the emulated `edgebench agent run` inside the root), sends it one signed
job for ``--model`` and waits until a ResultRecord from an aarch64 device arrives. The agent and the broker
are stopped by their PIDs. Exit 0 on success.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.schema import BenchSettings  # noqa: E402
from edgebench.broker import MosquittoBroker  # noqa: E402
from tests.support.fleet_peer import FleetPeer, wait_until  # noqa: E402


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--device-id", required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--signing-key", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("agent", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.agent[1:] if args.agent[:1] == ["--"] else args.agent
    if not command:
        parser.error("give the agent command after --")

    broker = MosquittoBroker(workdir=args.workdir, port=args.port).start()
    agent: subprocess.Popen | None = None
    log_path = args.workdir / "agent.log"
    try:
        with FleetPeer(broker.host, broker.port) as peer, open(log_path, "wb") as log:
            t0 = time.monotonic()
            agent = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            online = wait_until(
                lambda: any(s.device_id == args.device_id and s.state == "online" for s in peer.statuses),
                args.timeout,
                0.2,
            )
            if not online:
                print(f"the agent did not come online in {args.timeout:.0f} s", file=sys.stderr)
                return 1
            print(f"  agent online after {time.monotonic() - t0:.0f} s (emulated)")
            ref = peer.add_artifact(args.model)
            settings = BenchSettings(
                preset="quick", min_runs=5, min_time_s=0.05, max_time_s=2.0, threads=(1,)
            )
            job = peer.make_job([ref], f"device:{args.device_id}", settings)
            peer.send_job(job, args.signing_key, args.device_id)
            done = wait_until(lambda: peer.event(job.job_id, "done") or peer.event(job.job_id, "failed"),
                              args.timeout, 0.2)  # fmt: skip
            states = peer.states(job.job_id)
            if not done or not peer.results:
                print(f"no result within {args.timeout:.0f} s; job states {states}", file=sys.stderr)
                return 1
            record = peer.results[0]
            print(
                f"  job {states}; result {record.result_id}: status {record.status}, "
                f"arch {record.device.arch}, board {record.device.board}, "
                f"p50 {record.latency.p50_ms if record.latency else None} ms (emulated), "
                f"runtime {record.config.runtime} {record.config.runtime_version}"
            )
            if record.status != "ok" or record.device.arch not in ("aarch64", "arm64"):
                print(f"unexpected result: status {record.status}, error {record.error}", file=sys.stderr)
                return 1
            return 0
    finally:
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=120)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(timeout=30)
        broker.stop()
        if agent is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            print("  agent log (last lines):\n    " + "\n    ".join(tail))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
