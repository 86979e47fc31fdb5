"""The collector keeps the report index current while the stream is idle, so a report after ingest
finds no backlog (real mosquitto, real SQLite file)."""

from __future__ import annotations

import sqlite3
import time

from collector.config import BrokerSettings, CollectorConfig
from collector.ingest.ingestor import Ingestor
from collector.store.report_index import refresh_index
from testkit.mqtt_peer import Peer, db_count, wait_for
from testkit.records import make_record
from wire import topics
from wire.schema import new_id


def _meta(db_path, key: str) -> int:
    return db_count(db_path, "SELECT COALESCE(MAX(value), -1) FROM report_meta WHERE key = ?", (key,))


def test_idle_writer_catches_the_report_index_up(mosquitto, db_path):
    config = CollectorConfig(
        db=str(db_path),
        client_id=f"test-{new_id()[:8]}",
        broker=BrokerSettings(host=mosquitto.host, port=mosquitto.port, mqtt_version=5),
    )
    ing = Ingestor(config, index_idle_s=0.2, index_batch=100).start()
    peer = Peer(mosquitto.port, f"peer-{new_id()[:8]}")
    try:
        assert ing.wait_connected(10)
        assert wait_for(lambda: ing.client.is_connected(), 5)
        time.sleep(0.3)  # SUBACK
        n = 250
        for i in range(n):
            device = f"dev-{i % 3}"
            peer.publish(topics.results(device), make_record(device, p50_ms=1 + i % 7).to_json())
        assert wait_for(lambda: db_count(db_path) == n, 30)
        # Idle now: the writer indexes in steps of 100 rows until the watermark covers every row.
        assert wait_for(lambda: _meta(db_path, "indexed") == n, 30)
        assert wait_for(lambda: ing.index_caught_up, 10)
        assert db_count(db_path, "SELECT COUNT(*) FROM report_runs") == n
        max_rowid = db_count(db_path, "SELECT MAX(rowid) FROM results")
        assert _meta(db_path, "results_rowid") == max_rowid
    finally:
        peer.close()
        ing.stop()
    # A report starting now has nothing left to index.
    conn = sqlite3.connect(db_path)
    try:
        assert refresh_index(conn) == 0
        assert conn.execute("SELECT COUNT(DISTINCT cell_id) FROM report_runs").fetchone()[0] == 3
    finally:
        conn.close()


def test_no_indexing_while_messages_keep_coming(mosquitto, db_path):
    """Index steps give way to messages: a writer told to index only after a long idle spell never does
    during a stream, and the rows are all stored."""
    config = CollectorConfig(
        db=str(db_path),
        client_id=f"test-{new_id()[:8]}",
        broker=BrokerSettings(host=mosquitto.host, port=mosquitto.port, mqtt_version=5),
    )
    ing = Ingestor(config, index_idle_s=3600).start()
    peer = Peer(mosquitto.port, f"peer-{new_id()[:8]}")
    try:
        assert ing.wait_connected(10)
        assert wait_for(lambda: ing.client.is_connected(), 5)
        time.sleep(0.3)
        for _ in range(50):
            peer.publish(topics.results("dev-1"), make_record("dev-1").to_json())
        assert wait_for(lambda: db_count(db_path) == 50, 30)
        assert _meta(db_path, "indexed") == -1  # not indexed yet: the report would do it
        assert not ing.index_caught_up
    finally:
        peer.close()
        ing.stop()
