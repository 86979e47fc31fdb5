"""Fleet simulator: N simulated devices (testkit/sim_device.py) against a real mosquitto and a real
`edgebench collector serve` (2 workers, SQLite), models pushed with the real `edgebench fleet push`.

Phases, each with the collector's, the broker's and the simulator's CPU and RSS (psutil on their PIDs):

1. online: N devices connect (persistent sessions, last will, retained birth); the time until every
   device has its SUBACK and until the collector's ``devices`` table says N online;
2. push 1 MB to all: `fleet push --to all` of a fresh random .tflite (TFL3 header); every device
   verifies the job's signature, fetches the chunks (sha256 checked), publishes a result and the job
   events; the time from the push to the last result *receipt* (end-to-end ack), and MB/s delivered;
3. push 10 MB to the first 100 devices (tag ``big``), the same way;
4. burst: every device publishes ``--burst`` results at once; results/s stored (to the last receipt);
5. tally: every result id produced vs the database: lost and duplicated must be 0.

    python bench/fleet_sim.py -n 100
    python bench/fleet_sim.py -n 1000 --procs 2
    python bench/fleet_sim.py -n 1000 --big-mb 10 --big-devices 100 --burst 10

The open-file limit is raised to its hard limit in this process (the broker and the simulator processes
inherit it): 1,000 devices are 1,000 sockets on each side of the broker.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from edgebench.broker import MosquittoBroker, stop_process  # noqa: E402
from testkit.sim_common import BURST, SimConfig, SimStats  # noqa: E402
from testkit.sim_fleet import serve_devices  # noqa: E402
from wire.signing import generate_keypair  # noqa: E402

MB = 2**20


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def query(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return []


def scalar(db: Path, sql: str, params: tuple = ()) -> int:
    rows = query(db, sql, params)
    return int(rows[0][0] or 0) if rows else 0


def fake_tflite(path: Path, size: int) -> Path:
    """Random bytes with the TFL3 identifier at offset 4 (enough for the collector's content check)."""
    data = bytearray(os.urandom(size))
    data[4:8] = b"TFL3"
    path.write_bytes(bytes(data))
    return path


@dataclass
class Usage:
    cpu_s: float = 0.0
    peak_rss: int = 0


@dataclass
class Sampler:
    """CPU seconds and peak RSS per role, over a phase (psutil, every 0.25 s, children included)."""

    roles: dict[str, list[int]]
    usage: dict[str, Usage] = field(default_factory=dict)
    _base: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _procs(self, role: str) -> list[psutil.Process]:
        out = []
        for pid in self.roles.get(role, []):
            try:
                p = psutil.Process(pid)
                out += [p, *p.children(recursive=True)]
            except psutil.Error:
                pass
        return out

    def _cpu(self, role: str) -> float:
        total = 0.0
        for p in self._procs(role):
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def _rss(self, role: str) -> int:
        total = 0
        for p in self._procs(role):
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def start_phase(self) -> None:
        self.usage = {r: Usage() for r in self.roles}
        self._base = {r: self._cpu(r) for r in self.roles}
        self._stop.clear()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            for r in list(self.roles):
                u = self.usage.setdefault(r, Usage())
                u.peak_rss = max(u.peak_rss, self._rss(r))
                u.cpu_s = max(u.cpu_s, self._cpu(r) - self._base.get(r, 0.0))

    def end_phase(self, wall_s: float) -> str:
        self._stop.set()
        time.sleep(0.3)
        for r, u in self.usage.items():  # the last word: the CPU seconds up to now
            u.cpu_s = max(u.cpu_s, self._cpu(r) - self._base.get(r, 0.0))
            u.peak_rss = max(u.peak_rss, self._rss(r))
        parts = [
            f"{r} {100 * u.cpu_s / max(wall_s, 1e-9):.0f}% CPU {u.peak_rss / MB:.0f} MB"
            for r, u in self.usage.items()
        ]
        return "; ".join(parts)


class Fleet:
    """The simulator processes and their pipes."""

    def __init__(self, n: int, procs: int, big: int, cfg: SimConfig):
        specs = [(f"sim-{i:04d}", ("sim", "big") if i < big else ("sim",)) for i in range(n)]
        ctx = mp.get_context("spawn")
        self.pipes, self.procs = [], []
        for k in range(procs):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=serve_devices, args=(child, specs[k::procs], cfg), daemon=True)
            p.start()
            self.pipes.append(parent)
            self.procs.append(p)

    def stats(self) -> list[SimStats]:
        for pipe in self.pipes:
            pipe.send(("stats",))
        return [pipe.recv() for pipe in self.pipes]

    def burst(self, k: int) -> None:
        for pipe in self.pipes:
            pipe.send(("burst", k))

    def stop(self) -> list[SimStats]:
        for pipe in self.pipes:
            pipe.send(("stop",))
        out = [pipe.recv() for pipe in self.pipes if pipe.poll(60)]
        for p in self.procs:
            p.join(10)
        return out


def wait(pred, timeout_s: float, every_s: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every_s)
    return pred()


def job_totals(stats: list[SimStats], job_id: str) -> dict[str, float]:
    tallies = [s.jobs[job_id] for s in stats if job_id in s.jobs]
    return {
        "received": sum(t.received for t in tallies),
        "done": sum(t.done for t in tallies),
        "failed": sum(t.failed for t in tallies),
        "produced": sum(t.produced for t in tallies),
        "confirmed": sum(t.confirmed for t in tallies),
        "bytes": sum(t.bytes_fetched for t in tallies),
        "last": max((t.last_confirmed_at for t in tallies), default=0.0),
    }


def push_phase(args, env, work, fleet, sampler, db, port, key, mb: float, target: str, devices: int) -> bool:
    """`fleet push` one fresh model; wait for every device's result receipt. True: all delivered."""
    model = fake_tflite(work / f"push-{mb:g}mb-{time.monotonic_ns()}.tflite", int(mb * MB))
    cmd = [
        sys.executable,
        "-m",
        "edgebench",
        "fleet",
        "push",
        str(model),
        "--to",
        target,
        "--db",
        str(db),
        "--key",
        str(key),
        "--broker",
        f"127.0.0.1:{port}",
        "--preset",
        "quick",
        "--timeout",
        "900",
    ]
    known = set().union(*(s.jobs for s in fleet.stats()))
    sampler.start_phase()
    t0 = time.time()
    log = open(work / "push.log", "ab")  # noqa: SIM115
    push = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)
    log.close()
    sampler.roles["push"] = [push.pid]
    rc = push.wait(timeout=1000)
    push_s = time.time() - t0
    new = [j for s in fleet.stats() for j in s.jobs if j not in known and j != BURST]
    job = new[0] if new else ""
    ok = wait(lambda: job_totals(fleet.stats(), job)["confirmed"] >= devices, args.settle_s, 0.5)
    totals = job_totals(fleet.stats(), job)
    wall = max(totals["last"], t0) - t0
    usage = sampler.end_phase(wall)
    sampler.roles.pop("push", None)
    stored = scalar(db, "SELECT COUNT(*) FROM results WHERE job_id = ?", (job,))
    delivered = totals["bytes"] / MB
    print(
        f"push {mb:g} MB -> {target} ({devices} devices): last result receipt after {wall:.1f} s "
        f"(fleet push exited {rc} after {push_s:.1f} s); {delivered:.0f} MB delivered = "
        f"{delivered / max(wall, 1e-9):.1f} MB/s; done {totals['done']:.0f} failed {totals['failed']:.0f}; "
        f"results produced {totals['produced']:.0f} confirmed {totals['confirmed']:.0f} stored {stored}"
    )
    print(f"    {usage}")
    return ok and rc == 0 and totals["failed"] == 0


def online_phase(fleet_args, sampler, db) -> tuple[Fleet, float]:
    n, procs, big, cfg = fleet_args
    sampler.start_phase()
    t0 = time.time()
    fleet = Fleet(n, procs, big, cfg)
    sampler.roles["sim"] = [p.pid for p in fleet.procs]
    subscribed = wait(lambda: sum(s.subscribed for s in fleet.stats()) >= n, 600, 0.5)
    sim_s = max(s.online_at for s in fleet.stats()) - t0
    stored = wait(lambda: scalar(db, "SELECT COUNT(*) FROM devices WHERE online = 1") >= n, 300, 0.5)
    db_s = time.time() - t0
    online = scalar(db, "SELECT COUNT(*) FROM devices WHERE online = 1")
    usage = sampler.end_phase(db_s)
    print(
        f"online: {n} devices in {procs} process(es): all subscribed after {sim_s:.1f} s "
        f"({'ok' if subscribed else 'NOT ALL'}), collector says {online} online after {db_s:.1f} s"
        f"{'' if stored else ' (timed out)'}"
    )
    print(f"    {usage}")
    return fleet, db_s


def burst_phase(args, fleet, sampler, db) -> bool:
    base = scalar(db, "SELECT COUNT(*) FROM results")
    want = args.n * args.burst
    sampler.start_phase()
    t0 = time.time()
    fleet.burst(args.burst)
    ok = wait(lambda: scalar(db, "SELECT COUNT(*) FROM results") >= base + want, args.settle_s, 0.2)
    stored_s = time.time() - t0
    wait(lambda: job_totals(fleet.stats(), BURST)["confirmed"] >= want, args.settle_s, 0.5)
    totals = job_totals(fleet.stats(), BURST)
    acked_s = max(totals["last"], t0) - t0
    usage = sampler.end_phase(acked_s)
    print(
        f"burst: {want} results ({args.burst} per device): stored in {stored_s:.1f} s = "
        f"{want / max(stored_s, 1e-9):.0f} results/s; last receipt after {acked_s:.1f} s "
        f"({totals['confirmed']:.0f} confirmed)"
    )
    print(f"    {usage}")
    return ok


def tally(stats: list[SimStats], db: Path) -> bool:
    produced = {i for s in stats for i in s.produced_ids}
    rows = scalar(db, "SELECT COUNT(*) FROM results")
    stored = {r[0] for r in query(db, "SELECT result_id FROM results")}
    lost, extra, dup = len(produced - stored), len(stored - produced), rows - len(stored)
    resent = sum(s.resent for s in stats)
    print(
        f"tally: produced {len(produced)} stored {rows} lost {lost} duplicated {dup} unknown {extra}; "
        f"resent (no receipt in time) {resent}; receipts {sum(s.receipts for s in stats)}; "
        f"jobs rejected {sum(s.rejected_jobs for s in stats)}; sha256 mismatches "
        f"{sum(s.sha_mismatch for s in stats)}; chunk re-requests {sum(s.chunk_rerequests for s in stats)}; "
        f"reconnects {sum(s.connects for s in stats) - args_n(stats)}"
    )
    return lost == 0 and dup == 0 and extra == 0


def args_n(stats: list[SimStats]) -> int:
    return sum(s.devices for s in stats)


def start_collector(work: Path, db: Path, port: int, env: dict) -> subprocess.Popen:
    log = open(work / "collector.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgebench",
            "collector",
            "serve",
            "--db",
            str(db),
            "--broker",
            f"127.0.0.1:{port}",
            "--client-id",
            "fleet-sim",
            "--workers",
            "2",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
    )
    log.close()
    if not wait(lambda: scalar(db, "SELECT COUNT(*) FROM collector_health WHERE connected = 1") >= 2, 60):
        raise SystemExit(f"the collector did not connect: see {work / 'collector.log'}")
    return proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=100, help="simulated devices")
    ap.add_argument("--procs", type=int, default=0, help="simulator processes (default: 1 per 500 devices)")
    ap.add_argument("--all-mb", type=float, default=1.0, help="model pushed to every device")
    ap.add_argument("--big-mb", type=float, default=10.0, help="model pushed to --big-devices")
    ap.add_argument("--big-devices", type=int, default=100)
    ap.add_argument(
        "--burst",
        type=int,
        default=0,
        help="results per device in the burst phase (default: 10,000 results in all)",
    )
    ap.add_argument("--heartbeat-s", type=float, default=30.0)
    ap.add_argument("--settle-s", type=float, default=300.0, help="wait this long for receipts")
    args = ap.parse_args()
    procs = args.procs or max(1, -(-args.n // 500))
    args.burst = args.burst or max(1, -(-10_000 // args.n))
    big = min(args.big_devices, args.n)
    fds = raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="edgebench-fleet-sim-"))
    key, pub = generate_keypair(work / "keys")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    db = work / "collector.db"
    # autosave_on_changes would rewrite the broker's whole persistence file per change (N sessions)
    broker = MosquittoBroker(
        workdir=work / "mosquitto",
        max_queued_messages=1_000_000,
        extra_config=["autosave_on_changes false", "autosave_interval 30", "max_connections -1"],
    ).start()
    load = os.getloadavg()
    print(
        f"fleet_sim: {args.n} devices, {procs} simulator process(es); mosquitto 127.0.0.1:{broker.port}; "
        f"collector 2 workers, SQLite {db}; open files {fds}; {os.cpu_count()} cores, "
        f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (shared)"
    )
    collector = fleet = None
    ok = False
    try:
        collector = start_collector(work, db, broker.port, env)
        sampler = Sampler({"collector": [collector.pid], "broker": [broker.process.pid]})  # type: ignore[union-attr]
        cfg = SimConfig("127.0.0.1", broker.port, str(pub), heartbeat_s=args.heartbeat_s)
        fleet, _ = online_phase((args.n, procs, big, cfg), sampler, db)
        ok = push_phase(args, env, work, fleet, sampler, db, broker.port, key, args.all_mb, "all", args.n)
        if args.big_mb > 0 and big:
            ok = (
                push_phase(args, env, work, fleet, sampler, db, broker.port, key, args.big_mb, "tag:big", big)
                and ok
            )
        if args.burst:
            ok = burst_phase(args, fleet, sampler, db) and ok
        stats, fleet = fleet.stop(), None
        time.sleep(1.0)
        ok = tally(stats, db) and ok
        load = os.getloadavg()
        print(f"load after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; work dir {work}")
    finally:
        if fleet is not None:
            fleet.stop()
        stop_process(collector, timeout_s=30)
        broker.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
