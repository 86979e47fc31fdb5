"""Ingest benchmark: (a) a bare paho subscriber draining N result messages from mosquitto vs
(b) the collector storing the same N messages in SQLite (acknowledged after commit). One run.

Every consumer gets the *same* messages: persistent sessions are created first, then several
publisher processes (testkit/publish.py) publish N records while all are offline, so
mosquitto holds N queued messages per session and the publishers cannot be the limit. Each
consumer then drains its queue; the rate is measured from its first to its last message.
Afterwards the database must hold exactly
the N unique result ids: 0 lost, 0 duplicated.

    python bench/ingest.py                 # 50,000 results, 4 publishers, collector with 1 and 2 workers
    python bench/ingest.py -n 20000 --workers 2
    python bench/ingest.py --rounds 5      # the whole publish/drain cycle 5 times: min/median/max

`edgebench collector serve` runs 2 workers by default (MQTT 5, 2+ cores); the figures are per
worker count given here.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from edgebench.broker import MosquittoBroker  # noqa: E402
from testkit.records import make_record  # noqa: E402
from wire import topics  # noqa: E402


def _props() -> Properties:
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = 3600
    return p


def raw_subscriber(port: int, n: int, client_id: str, subscribe_only: bool) -> None:
    """Bare paho (auto-ack): count n messages, print the drain rate."""
    got = [0]
    times: list[float] = []

    def on_message(c, u, m) -> None:
        got[0] += 1
        if got[0] == 1 or got[0] == n:
            times.append(time.perf_counter())

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.on_message = on_message
    c.connect("127.0.0.1", port, clean_start=False, properties=_props())
    if subscribe_only:
        c.subscribe(topics.ALL_RESULTS, 1)
        c.loop_start()
        time.sleep(0.5)
        c.disconnect()
        c.loop_stop()
        return
    c.loop_start()
    deadline = time.monotonic() + 600
    while got[0] < n and time.monotonic() < deadline:
        time.sleep(0.01)
    c.disconnect()
    c.loop_stop()
    rate = (n - 1) / (times[-1] - times[0]) if len(times) == 2 else 0.0
    print(f"RAW {got[0]} {rate:.1f}", flush=True)


def count(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


def collector_cmd(db: Path, port: int, client_id: str, workers: int) -> list[str]:
    return [sys.executable, "-m", "edgebench", "collector", "serve", "--db", str(db),
            "--broker", f"127.0.0.1:{port}", "--client-id", client_id, "--workers", str(workers)]  # fmt: skip


def run_collector(
    db: Path, port: int, client_id: str, workers: int, n: int, log: Path
) -> tuple[float, int, int]:
    """Drain n new messages; return (rate, rows, distinct result ids) of the whole database."""
    base = count(db)  # rows of earlier rounds
    n += base
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "ab") as fh:
        proc = subprocess.Popen(collector_cmd(db, port, client_id, workers), stdout=fh, stderr=fh, env=env)
    try:
        deadline = time.monotonic() + 600
        t0 = c0 = None
        while time.monotonic() < deadline:
            c = count(db)
            now = time.perf_counter()
            if t0 is None and c > base:
                t0, c0 = now, c
            if c >= n:
                break
            time.sleep(0.02)
        t1 = time.perf_counter()
        time.sleep(1.0)  # let late redeliveries, if any, land (they would show as rows > n or dupes)
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        rows, distinct = conn.execute("SELECT COUNT(*), COUNT(DISTINCT result_id) FROM results").fetchone()
        conn.close()
        rate = (n - c0) / (t1 - t0) if t0 is not None and c0 is not None and t1 > t0 else 0.0
        return rate, rows, distinct
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _round(
    args: argparse.Namespace,
    work: Path,
    port: int,
    me: list[str],
    rnd: int,
    ratios: dict[int, list[float]],
    rates: dict[int, list[float]],
) -> bool:
    """One publish/drain cycle: every session gets the same n messages, each consumer drains them."""
    n, pubs = args.n, args.publishers
    # 2. Publish N records while everyone is offline (queued per session).
    per = [n // pubs + (1 if i < n % pubs else 0) for i in range(pubs)]
    t = time.perf_counter()
    procs = []
    for i, k in enumerate(per):
        device = f"bench-{i}"
        lines = work / f"lines-{rnd}-{i}.txt"
        lines.write_text("\n".join(make_record(device).to_json() for _ in range(k)) + "\n")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "testkit.publish",
                    str(port),
                    topics.results(device),
                    str(lines),
                ],
                cwd=ROOT,
            )
        )
    for p in procs:
        if p.wait(timeout=600) != 0:
            raise SystemExit("a publisher failed")
    pub_s = time.perf_counter() - t
    print(f"published {n} in {pub_s:.2f} s ({n / pub_s:.0f}/s, {pubs} publisher processes, QoS 1)")
    time.sleep(1.5)  # autosave
    # 3. Drain: bare paho, then the collector(s).
    out = subprocess.run(me, check=True, capture_output=True, text=True).stdout
    _, got, raw_rate = out.split()
    raw = float(raw_rate)
    print(f"(a) bare paho subscriber drain:     {raw:8.0f} messages/s ({got} of {n})")
    ok = True
    for w in args.workers:
        db = work / f"collector-w{w}.db"
        rate, rows, distinct = run_collector(db, port, f"bench-w{w}", w, n, work / f"collector-w{w}.log")
        lost, dup = rnd * n - distinct, rows - distinct  # over every round so far
        ratios[w].append(rate / raw)
        rates[w].append(rate)
        verdict = "ok" if rate >= 5000 and rate / raw >= 0.8 and not lost and not dup else "below target"
        print(f"(b) collector, {w} worker{'s' if w > 1 else ' '} -> SQLite: {rate:8.0f} results/s   "
              f"ratio {rate / raw:.2f}   lost {lost}  duplicated {dup}   [{verdict}]")  # fmt: skip
        ok = ok and not lost and not dup
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=50000, help="result messages (default 50000)")
    ap.add_argument("--publishers", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="collector worker counts to run")
    ap.add_argument("--rounds", type=int, default=1, help="publish/drain cycles (a distribution)")
    ap.add_argument("--raw-subscriber", nargs=3, metavar=("PORT", "N", "ID"), help=argparse.SUPPRESS)
    ap.add_argument("--subscribe-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.raw_subscriber:
        port, n, cid = args.raw_subscriber
        raw_subscriber(int(port), int(n), cid, args.subscribe_only)
        return 0

    n, pubs = args.n, args.publishers
    work = Path(tempfile.mkdtemp(prefix="edgebench-bench-ingest-"))
    # autosave_on_changes (the test fixture's setting) would rewrite mosquitto's whole database for every
    # message queued to an offline session; a snapshot per second is enough here (the broker is not killed).
    broker = MosquittoBroker(
        workdir=work / "mosquitto",
        max_queued_messages=max(100000, 2 * n),
        extra_config=["autosave_on_changes false", "autosave_interval 5"],
    ).start()
    print(f"mosquitto on 127.0.0.1:{broker.port}; {n} results from {pubs} publisher processes; "
          f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} (shared)")  # fmt: skip
    try:
        # 1. Persistent sessions for every consumer, then offline.
        me = [sys.executable, __file__, "--raw-subscriber", str(broker.port), str(n), "raw"]
        subprocess.run([*me, "--subscribe-only"], check=True)
        for w in args.workers:
            db = work / f"collector-w{w}.db"
            log = work / f"collector-w{w}.log"
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            with open(log, "ab") as fh:
                p = subprocess.Popen(
                    collector_cmd(db, broker.port, f"bench-w{w}", w), stdout=fh, stderr=fh, env=env
                )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
                    up = conn.execute("SELECT COUNT(*) FROM collector_health WHERE connected = 1").fetchone()[
                        0
                    ]
                    conn.close()
                    if up >= w:
                        break
                except sqlite3.OperationalError:
                    pass
                time.sleep(0.1)
            p.terminate()
            p.wait(timeout=30)
        ok = True
        ratios: dict[int, list[float]] = {w: [] for w in args.workers}
        rates: dict[int, list[float]] = {w: [] for w in args.workers}
        for r in range(1, args.rounds + 1):
            if args.rounds > 1:
                print(f"-- round {r} of {args.rounds} (load {os.getloadavg()[0]:.1f})")
            ok = _round(args, work, broker.port, me, r, ratios, rates) and ok
        if args.rounds > 1:
            for w in args.workers:
                q, v = sorted(ratios[w]), sorted(rates[w])
                med_q, med_v = statistics.median(q), statistics.median(v)
                print(f"{w} worker{'s' if w > 1 else ' '}: ratio min {q[0]:.2f} median {med_q:.2f} "
                      f"max {q[-1]:.2f}; results/s min {v[0]:.0f} median {med_v:.0f} "
                      f"max {v[-1]:.0f}  ({len(q)} rounds)")  # fmt: skip
        print("targets: ratio >= 0.8 and >= 5,000 results/s; 0 lost, 0 duplicated")
        return 0 if ok else 1
    finally:
        broker.stop()


if __name__ == "__main__":
    raise SystemExit(main())
