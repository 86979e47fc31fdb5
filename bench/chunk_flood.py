"""Chunk request flood vs a real push (issue 13): real mosquitto, real ChunkServer, two device clients.

    python bench/chunk_flood.py [--runs 3] [--flood 150] [--size-mb 8]

A "collector" process runs a ChunkServer on the collector's SQLite (jobs and artifacts registered as
`fleet push` does) behind a paho client, like `collector serve`. Two simulated devices connect to the same
mosquitto: the *victim* fetches its pushed artifact with the agent's own ArtifactFetcher (256 KiB chunks,
sha256 checked); the *flooder* sends ``--flood`` chunk requests as fast as QoS 1 allows (for its own job's
artifact, twice as large, again and again; for the victim's artifact, not addressed to it; for unknown
hashes) and consumes what it is sent. Prints the victim's fetch time alone and during the flood (median of
``--runs``), their ratio, the collector's RSS before/after and what the server queued and refused for the
flooder. Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from agent.jobs.chunk_fetch import ArtifactCache, ArtifactFetcher, sha256_file  # noqa: E402
from wire import topics  # noqa: E402
from wire.schema import ArtifactRef, BenchSettings, ChunkRequest, Job, new_id, utc_now  # noqa: E402

CHUNK = 256 * 1024


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --------------------------------------------------------------------------- the collector side
def serve(db: str, port: int, stats_path: str) -> int:
    from collector.config import BrokerSettings
    from collector.fleet.chunks import ChunkServer
    from collector.messages.parse import parse
    from collector.mqtt.client import make_client

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = ChunkServer(db)
    client = make_client(BrokerSettings(host="127.0.0.1", port=port), "bench-collector", persistent=False)

    def on_message(_c, _u, msg) -> None:
        parsed = parse(msg.topic, msg.payload, 1 << 20)
        if parsed.kind == "chunk_request":
            server.handle(parsed.message)

    client.on_connect = lambda c, *_: c.subscribe(topics.ALL_CHUNK_REQUESTS, qos=1)
    client.on_message = on_message
    server.attach(client)
    client.connect("127.0.0.1", port)
    client.loop_start()
    peak = 0.0
    while not stop.wait(0.1):
        rss = rss_mb(os.getpid())
        peak = max(peak, rss)
        stats = {d: vars(server.stats(d)) for d in ("victim", "flooder")}
        out = {"rss_mb": rss, "peak_rss_mb": peak, "devices": stats, "inflight": server.inflight_bytes()}
        Path(stats_path + ".tmp").write_text(json.dumps(out))
        os.replace(stats_path + ".tmp", stats_path)
    server.close()
    client.disconnect()
    client.loop_stop()
    return 0


# --------------------------------------------------------------------------- the devices
class Device:
    def __init__(self, port: int, device_id: str) -> None:
        self.device_id = device_id
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-{device_id}", protocol=mqtt.MQTTv5
        )
        self.received = 0
        self.on_chunk = None
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        _r, _mid = self.client.subscribe(topics.device_chunks(device_id), qos=1)
        time.sleep(0.3)

    def _on_message(self, _c, _u, msg) -> None:
        self.received += 1
        if self.on_chunk is not None:
            self.on_chunk(msg.payload)

    def request(self, request: ChunkRequest) -> None:
        info = self.client.publish(topics.chunk_requests(self.device_id), request.to_json(), qos=1)
        info.wait_for_publish(timeout=10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def fetch(victim: Device, ref: ArtifactRef, work: Path) -> float:
    cache = ArtifactCache(work / f"cache-{secrets.token_hex(4)}", 1 << 30)
    fetcher = ArtifactFetcher(cache, victim.device_id, victim.request, chunk_size=CHUNK, chunk_timeout_s=5.0)
    victim.on_chunk = fetcher.on_chunk
    t0 = time.perf_counter()
    path = fetcher.fetch(ref)
    elapsed = time.perf_counter() - t0
    victim.on_chunk = None
    assert sha256_file(path) == ref.sha256, "victim got a corrupt artifact"
    return elapsed


def flood(flooder: Device, own: str, victims: str, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        kind = i % 10
        if kind < 7:
            sha, size = own, CHUNK  # its own job's artifact, again and again
        elif kind < 9:
            sha, size = victims, CHUNK  # not addressed to it
        else:
            sha, size = secrets.token_hex(32), 1024  # unknown
        info = flooder.client.publish(
            topics.chunk_requests(flooder.device_id),
            ChunkRequest(flooder.device_id, sha, chunk_size=size).to_json(),
            qos=1,
        )
        if i % 50 == 49:
            info.wait_for_publish(timeout=10)
    return time.perf_counter() - t0


def make_artifact(path: Path, size: int) -> ArtifactRef:
    path.write_bytes(b"\x08" + os.urandom(size - 1))
    return ArtifactRef(path.name, sha256_file(path), size, "onnx")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--flood", type=int, default=150, help="chunk requests the flooder sends per run")
    parser.add_argument("--size-mb", type=float, default=8.0, help="the victim's artifact")
    parser.add_argument("--serve", nargs=3, metavar=("DB", "PORT", "STATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve[0], int(args.serve[1]), args.serve[2])

    from collector.store.sqlite import open_db, record_job, register_artifact
    from edgebench.broker import MosquittoBroker

    work = Path(tempfile.mkdtemp(prefix="chunk-flood-"))
    victim_ref = make_artifact(work / "victim.onnx", int(args.size_mb * 1024 * 1024))
    flooder_ref = make_artifact(work / "flooder.onnx", int(2 * args.size_mb * 1024 * 1024))
    db_path = work / "edgebench.db"
    db = open_db(db_path)
    for ref in (victim_ref, flooder_ref):
        register_artifact(db, ref, path=work / ref.name)
    record_job(db, Job(new_id(), utc_now(), "device:victim", (victim_ref,), BenchSettings()))
    record_job(db, Job(new_id(), utc_now(), "device:flooder", (flooder_ref,), BenchSettings()))
    db.conn.close()

    broker = MosquittoBroker(workdir=work / "mosquitto").start()
    stats_path = work / "stats.json"
    collector = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(db_path), str(broker.port), str(stats_path)], cwd=ROOT
    )
    devices: list[Device] = []
    try:
        deadline = time.monotonic() + 20
        while not stats_path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        victim, flooder = Device(broker.port, "victim"), Device(broker.port, "flooder")
        devices = [victim, flooder]
        fetch(victim, victim_ref, work)  # warm up (hashing, page cache)
        alone = [fetch(victim, victim_ref, work) for _ in range(args.runs)]
        time.sleep(0.5)
        rss_before = json.loads(stats_path.read_text())["rss_mb"]
        during = []
        for _ in range(args.runs):
            t = threading.Thread(
                target=flood, args=(flooder, flooder_ref.sha256, victim_ref.sha256, args.flood)
            )
            t.start()
            during.append(fetch(victim, victim_ref, work))
            t.join(timeout=60)
            time.sleep(61 / max(1, args.runs) if args.runs > 1 else 0)  # let the rate limit refill a little
        end = time.monotonic() + 60
        while json.loads(stats_path.read_text())["inflight"] and time.monotonic() < end:
            time.sleep(0.2)
        time.sleep(1.0)
        final = json.loads(stats_path.read_text())
        fl = final["devices"]["flooder"]
        a, d = statistics.median(alone), statistics.median(during)
        mb = victim_ref.size_bytes / 2**20
        print(f"victim push: {mb:.0f} MiB in {victim_ref.size_bytes // CHUNK} chunks of 256 KiB")
        print(f"victim fetch alone:        {a:.2f} s  (runs: {', '.join(f'{x:.2f}' for x in alone)})")
        print(f"victim fetch during flood: {d:.2f} s  (runs: {', '.join(f'{x:.2f}' for x in during)})")
        print(f"ratio during/alone:        {d / a:.2f}x")
        print(
            f"collector RSS: before flood {rss_before:.1f} MB, after {final['rss_mb']:.1f} MB, "
            f"peak {final['peak_rss_mb']:.1f} MB"
        )
        refused = ", ".join(f"{k} {v}" for k, v in sorted(fl["refused_by"].items()))
        print(
            f"flooder: {fl['requests']} requests ({args.flood} per run x {args.runs}), "
            f"{fl['queued']} chunks queued, {fl['coalesced']} coalesced, {fl['sent']} sent, "
            f"{fl['refused']} requests refused ({refused}); its device received {flooder.received} chunks"
        )
        print(f"(unlimited, each request for its artifact queued {flooder_ref.size_bytes // CHUNK} chunks)")
        return 0
    finally:
        for dev in devices:
            dev.close()
        collector.send_signal(signal.SIGTERM)
        try:
            collector.wait(timeout=15)
        except subprocess.TimeoutExpired:
            collector.kill()
        broker.stop()


if __name__ == "__main__":
    raise SystemExit(main())
