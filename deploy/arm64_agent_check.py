"""Host side of deploy/test-arm64.sh (run with the host's python, from the repository).

``prepare``: a test CA and server certificate (for 127.0.0.1) and the collector's broker password.
``run``: starts mosquitto on the host's loopback with the production config deploy/mosquitto/edgebench.conf
(TLS listener, password file, ACL; only paths and ports rewritten, as in tests/test_deploy_mosquitto.py),
connects a small collector stand-in as user edgebench-collector on the plain loopback listener
(testkit/fleet_peer.py: serves model chunks, signs and sends jobs), starts the agent command given
after ``--`` (the emulated `edgebench agent run` inside the arm64 root, which connects over TLS with its
enrolled password), sends it one signed job for ``--model`` and waits for a ResultRecord from an aarch64
device. The agent and the broker are stopped by their PIDs. Exit 0 on success.
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

from collector.fleet.enroll import generate_password, set_password  # noqa: E402
from testkit.fleet_peer import FleetPeer, wait_until  # noqa: E402
from tests.test_deploy_mosquitto import Certs, ProductionBroker, make_certs  # noqa: E402
from wire.schema import BenchSettings  # noqa: E402

COLLECTOR = "edgebench-collector"


def prepare(workdir: Path) -> int:
    make_certs(workdir / "tls")
    password = generate_password()
    set_password(workdir / "edgebench.passwd", COLLECTOR, password)
    (workdir / "collector.password").write_text(password + "\n")
    return 0


def run(args: argparse.Namespace, command: list[str]) -> int:
    tls = args.workdir / "tls"
    broker = ProductionBroker(
        workdir=args.workdir / "mosquitto",
        port=args.plain_port,
        tls_port=args.tls_port,
        certs=Certs(
            ca=tls / "edgebench-test-ca.crt",
            server_cert=tls / "server.crt",
            server_key=tls / "server.key",
            other_ca=tls / "someone-else-ca.crt",
        ),
        password_file=args.workdir / "edgebench.passwd",
    ).start()
    agent: subprocess.Popen | None = None
    log_path = args.workdir / "agent.log"
    try:
        peer = FleetPeer(broker.host, broker.port)
        peer.client.username_pw_set(COLLECTOR, (args.workdir / "collector.password").read_text().strip())
        with peer, open(log_path, "wb") as log:
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
            print(f"  agent online over TLS after {time.monotonic() - t0:.0f} s (emulated)")
            ref = peer.add_artifact(args.model)
            settings = BenchSettings(
                preset="quick", min_runs=5, min_time_s=0.05, max_time_s=2.0, threads=(1,)
            )
            job = peer.make_job([ref], f"device:{args.device_id}", settings)
            peer.send_job(job, args.signing_key, args.device_id)
            done = wait_until(
                lambda: peer.event(job.job_id, "done") or peer.event(job.job_id, "failed"), args.timeout, 0.2
            )
            states = peer.states(job.job_id)
            if not done or not peer.results:
                print(f"no result within {args.timeout:.0f} s; job states {states}", file=sys.stderr)
                return 1
            record = peer.results[0]
            print(
                f"  job {states}; result {record.result_id}: status {record.status}, "
                f"arch {record.device.arch}, p50 {record.latency.p50_ms if record.latency else None} ms "
                f"(emulated), runtime {record.config.runtime} {record.config.runtime_version}"
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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["prepare", "run"])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--tls-port", type=int, default=0)
    parser.add_argument("--plain-port", type=int, default=0)
    parser.add_argument("--device-id", default="")
    parser.add_argument("--model", type=Path)
    parser.add_argument("--signing-key", type=Path)
    parser.add_argument("--timeout", type=float, default=900)
    command: list[str] = []
    if "--" in argv:
        argv, command = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    args = parser.parse_args(argv)
    if args.action == "prepare":
        return prepare(args.workdir)
    needed = (command, args.tls_port, args.plain_port, args.device_id, args.model, args.signing_key)
    if not all(needed):
        parser.error("run needs --tls-port, --plain-port, --device-id, --model, --signing-key and -- COMMAND")
    return run(args, command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
