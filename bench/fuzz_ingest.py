"""Fuzz the collector: a real mosquitto and a real collector (collector.ingest.ingestor.Ingestor) take N
generated hostile payloads (testkit/hostile.py, the generators of the property tests) mixed
with valid records on the results, status and events topics. One run.

    python bench/fuzz_ingest.py               # 10,000 payloads, 1 in 5 a valid record
    python bench/fuzz_ingest.py -n 50000 --seed 7

Prints: service stops (must be 0), valid records stored / sent, dead letters (by class), and the
process's RSS before and after.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from collector.config import BrokerSettings, CollectorConfig  # noqa: E402
from collector.ingest.ingestor import Ingestor  # noqa: E402
from edgebench.broker import MosquittoBroker  # noqa: E402
from testkit import hostile as h  # noqa: E402
from testkit.records import make_record  # noqa: E402
from wire import topics  # noqa: E402
from wire.schema import new_id  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def subscribed(topic: str) -> bool:
    parts = topic.split("/")
    return len(parts) == 5 and parts[:3] == ["edgebench", "v1", "devices"] and parts[4] in h.MESSAGE_LEAVES


def payloads(n: int, seed: int, valid_share: float) -> tuple[list[tuple[str, bytes]], set[str]]:
    rnd = random.Random(seed)
    out: list[tuple[str, bytes]] = []
    valid_ids: set[str] = set()
    while len(out) < n:
        if rnd.random() < valid_share:
            record = make_record(h.DEVICE, p50_ms=rnd.uniform(0.01, 50))
            valid_ids.add(record.result_id)
            out.append((topics.results(h.DEVICE), record.to_json().encode()))
            continue
        msg = h.hostile(rnd, h.MESSAGE_LEAVES)
        if subscribed(msg.topic):
            out.append((msg.topic, msg.payload))
    return out, valid_ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=10_000, help="payloads to publish")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--valid-share", type=float, default=0.2)
    args = ap.parse_args()
    logging.getLogger("edgebench.collector").setLevel(logging.ERROR)  # one warning per dead letter
    stream, valid_ids = payloads(args.n, args.seed, args.valid_share)
    with tempfile.TemporaryDirectory(prefix="edgebench-fuzz-") as tmp:
        work = Path(tmp)
        # No persistence: its autosave after every change rewrites every queued payload each time.
        broker = MosquittoBroker(workdir=work / "mosquitto", extra_config=["persistence false"]).start()
        config = CollectorConfig(
            db=str(work / "fuzz.db"),
            client_id=f"fuzz-{new_id()[:8]}",
            broker=BrokerSettings(host=broker.host, port=broker.port, mqtt_version=5),
            max_payload_bytes=h.MAX_BYTES,
        )
        ing = Ingestor(config).start()
        try:
            if not ing.wait_connected(10):
                raise SystemExit("collector did not connect")
            time.sleep(0.5)  # SUBACK
            before = rss_mb()
            pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fuzz-pub", protocol=mqtt.MQTTv5)
            pub.max_inflight_messages_set(100)
            pub.connect(broker.host, broker.port)
            pub.loop_start()
            t0 = time.perf_counter()
            for start in range(0, len(stream), 200):  # windows: paho slows down with thousands queued
                infos = [pub.publish(topic, payload, qos=1) for topic, payload in stream[start : start + 200]]
                for info in infos:
                    info.wait_for_publish(timeout=60)
            print(f"published in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            deadline = time.monotonic() + 300
            while (
                # its own retained-status clears come back to it (counted as drops)
                ing.stats.committed < len(stream) + ing.stats.retained_cleared
                and time.monotonic() < deadline
                and ing._writer_error is None
            ):
                time.sleep(0.05)
            elapsed = time.perf_counter() - t0
            pub.disconnect()
            pub.loop_stop()
            after = rss_mb()
            stops = int(ing._writer_error is not None or not (ing._writer and ing._writer.is_alive()))
            marks = ",".join("?" * len(valid_ids))
            stored = ing.conn.execute(
                f"SELECT COUNT(*) FROM results WHERE result_id IN ({marks})", sorted(valid_ids)
            ).fetchone()[0]
            dead = Counter(ing.stats.dead)
            stats = ing.stats
        finally:
            ing.stop()
            broker.stop()
    hostile = len(stream) - len(valid_ids)
    print(f"payloads published:    {len(stream):,} ({hostile:,} hostile) in {elapsed:.1f} s")
    print(f"service stops:         {stops}")
    print(f"valid records stored:  {stored:,} / {len(valid_ids):,} sent")
    print(
        f"committed (received):  {stats.committed:,} ({stats.received:,}: {len(stream):,} published + "
        f"{stats.retained_cleared:,} own retained-status clears)"
    )
    print(
        f"dead letters:          {sum(dead.values()):,}  "
        + ", ".join(f"{k} {v}" for k, v in dead.most_common())
    )
    print(f"other stored:          results {stats.results_inserted:,}, statuses {stats.statuses:,}, "
          f"events {stats.events:,}")  # fmt: skip
    print(f"RSS:                   {before:.1f} MB before, {after:.1f} MB after")
    if stops or stored != len(valid_ids):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
