"""The PostgreSQL store against a real server (testkit/postgres.py: a cluster in a temp dir, stopped
by PID) and ingest into it through a real mosquitto: the store protocol, migrations, no loss and no
duplicate, receipts, dead letters, two collectors sharing the subscription and the database."""

from __future__ import annotations

import inspect
import json
import threading
from dataclasses import replace

import psycopg
import pytest

from agent.delivery.outbox import MemoryOutbox
from agent.delivery.transport import MqttTransport
from agent.service.config import BrokerSettings as AgentBroker
from collector.config import BrokerSettings, CollectorConfig
from collector.ingest.ingestor import Ingestor
from collector.store.api import (
    INTERNAL,
    REFUSED,
    TRANSIENT,
    BatchTarget,
    DeadLetter,
    HealthRow,
    ResultStore,
    StoreTransaction,
)
from collector.store.migrations import MigrationError
from collector.store.open import SqliteBatchTarget, is_postgres_url, open_store, redact
from collector.store.postgres import PostgresStore, PostgresTransaction, classify
from collector.store.sqlite import SqliteStore
from testkit.mqtt_peer import Peer, wait_for
from testkit.postgres import pg_url, postgres_server  # noqa: F401 (fixtures)
from testkit.publish import publish_file
from testkit.records import make_record, make_status
from wire import topics
from wire.schema import ArtifactInfo, ArtifactRef, BenchSettings, Job, JobEvent, new_id, utc_now

DEVICE = "dev-pg1"


def pg_count(url: str, query: str = "SELECT COUNT(*) FROM results", params: tuple = ()) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(query, params).fetchone()
    return int(row[0] or 0) if row else 0


@pytest.fixture
def store(pg_url):  # noqa: F811
    s = PostgresStore.open(pg_url)
    yield s
    s.close()


# ---------------------------------------------------------------- the store


def test_migrations_apply_once_concurrently_and_a_newer_db_is_refused(pg_url):  # noqa: F811
    errors: list[BaseException] = []

    def open_close() -> None:
        try:
            PostgresStore.open(pg_url).close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_close) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert pg_count(pg_url, "SELECT COUNT(*) FROM schema_migrations") == 3  # versions 1, 3, 4
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (99, 'from the future', 'now')")
    with pytest.raises(MigrationError, match="newer than this build"):
        PostgresStore.open(pg_url)


def test_results_devices_jobs_artifacts(store, pg_url):  # noqa: F811
    a, b = make_record(DEVICE, p50_ms=1.2345678901234), make_record(DEVICE)
    assert store.insert_results([a, b]) == 2
    assert store.insert_results([a]) == 0  # a redelivery is absorbed
    assert store.count("results") == 2
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            'SELECT p50_ms, "precision", size_bytes, stable, record, profile_ops FROM results '
            "WHERE result_id = %s",
            (a.result_id,),
        ).fetchone()
    assert row[0] == 1.2345678901234 and row[1:4] == ("fp32", 1234, 1)  # DOUBLE PRECISION, not REAL
    assert json.loads(row[4])["result_id"] == a.result_id and row[5] == 0

    store.upsert_device(make_status(DEVICE, at="2025-01-01T00:00:10.000Z"))
    late = make_status(
        DEVICE, state="offline", at="2025-01-01T00:00:05.000Z", reason="last-will", facts=False
    )
    store.upsert_device(late)  # older than the stored one: never flips the state back
    with psycopg.connect(pg_url) as conn:
        dev = conn.execute("SELECT online, board, last_seen, last_reason FROM devices").fetchone()
    assert dev == (1, "test board", "2025-01-01T00:00:10.000Z", "birth")

    ref = ArtifactRef(name="m.onnx", sha256="cd" * 32, size_bytes=10, format="onnx")
    job = Job(job_id=new_id(), created_at=utc_now(), target="all", settings=BenchSettings(), artifacts=(ref,))
    store.record_job(job)
    store.record_job(job, state="done")
    store.set_job_state(job.job_id, "unpublished")
    event = JobEvent(job.job_id, DEVICE, "running", "2025-01-01T00:00:00.000Z", progress=0.5)
    assert store.insert_job_events([event, event]) == 1
    assert store.insert_job_events([event]) == 0
    assert pg_count(pg_url, "SELECT COUNT(*) FROM jobs WHERE state = 'unpublished'") == 1

    info = ArtifactInfo(name="m.onnx", sha256="cd" * 32, format="onnx", size_bytes=3 << 31, model="m")
    store.register_artifact(info, path="/srv/m.onnx", fidelity={"top1": 0.9})
    store.register_artifact(info, source="again")  # no path given: the stored one stays
    assert str(store.artifact_path(info.sha256)) == "/srv/m.onnx" and store.artifact_path("00") is None
    assert pg_count(pg_url, "SELECT size_bytes FROM artifacts") == 3 << 31  # BIGINT


def test_transaction_dead_letters_health_and_rollback(store, pg_url):  # noqa: F811
    row = HealthRow("c1", 1, "t0", "t1", True, 5, 5, 4, 1, 0, 0, 1.5, 0.1, 0)
    with store.transaction() as tx:
        tx.insert_dead_letters([DeadLetter("t/x", "bad-json: nul", b"\x00\xffraw")], utc_now())
        tx.write_health(row)
        tx.write_health(replace(row, committed=9, connected=False))
    assert pg_count(pg_url, "SELECT committed FROM collector_health WHERE connected = 0") == 9
    with psycopg.connect(pg_url) as conn:
        (excerpt,) = conn.execute("SELECT excerpt FROM dead_letters").fetchone()
    assert excerpt.startswith("\\u0000")  # PostgreSQL text cannot hold NUL: escaped, kept
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.insert_results([make_record(DEVICE)], [None], utc_now())
        raise RuntimeError("rolled back")
    assert store.count("results") == 0


def test_errors_are_classified_and_a_lost_connection_is_retried(store):
    bad = replace(make_record(DEVICE, status="failed"), error="nul\x00here")
    with pytest.raises(psycopg.Error) as refused:
        store.insert_results([bad])
    assert classify(refused.value) == REFUSED and classify(ValueError()) == INTERNAL
    with psycopg.connect(store.url, autocommit=True) as admin:  # the server drops the collector's session
        pid = store.connection().info.backend_pid
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    calls: list[int] = []

    def write(begin) -> int:
        calls.append(1)
        with begin() as tx:
            return tx.insert_results([make_record(DEVICE)], [None], utc_now())

    assert store.write(write, threading.Event()) == 1  # TRANSIENT: reconnected, retried
    assert len(calls) == 2 and store.classify(psycopg.OperationalError()) == TRANSIENT


def test_both_stores_implement_the_store_interface():
    """Every method the protocols name, with the same parameters (as tests/test_store.py for SQLite)."""
    pairs = (
        (ResultStore, PostgresStore),
        (StoreTransaction, PostgresTransaction),
        (BatchTarget, PostgresStore),
        (BatchTarget, SqliteBatchTarget),
    )
    for protocol, impl in pairs:
        names = [n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")]
        assert names, protocol
        for name in names:
            want = list(inspect.signature(getattr(protocol, name)).parameters)
            have = list(inspect.signature(getattr(impl, name)).parameters)
            assert have == want, f"{impl.__name__}.{name}{have} != {protocol.__name__}.{name}{want}"


def test_open_store_selects_the_backend_by_url(pg_url, tmp_path):  # noqa: F811
    assert is_postgres_url(pg_url) and is_postgres_url("postgres://h/db")
    assert not is_postgres_url(str(tmp_path / "e.db")) and not is_postgres_url("postgresql.db")
    assert redact("postgresql://u:secret@h:5/db") == "postgresql://u:***@h:5/db"
    pg, lite = open_store(pg_url), open_store(tmp_path / "e.db")
    try:
        assert isinstance(pg, PostgresStore) and isinstance(lite, SqliteStore)
    finally:
        pg.close()
        lite.close()


# ---------------------------------------------------------------- ingest into PostgreSQL


def _ingestor(broker, url: str, **kw) -> Ingestor:
    config = CollectorConfig(
        db=url,
        client_id=kw.pop("client_id", f"test-{new_id()[:8]}"),
        broker=BrokerSettings(host=broker.host, port=broker.port),
        max_payload_bytes=8192,
    )
    ing = Ingestor(config, **kw).start()
    assert ing.wait_connected(10)
    return ing


def _publish_twice(broker, lines: list[str], work) -> None:
    path = work / "results.jsonl"
    path.write_text("\n".join(lines) + "\n")
    for _ in range(2):  # the same N records twice: every copy after the first is absorbed
        assert publish_file(broker.port, topics.results(DEVICE), str(path), timeout_s=60) == 0


def test_ingest_no_loss_no_duplicate_with_receipts(mosquitto, pg_url, tmp_path):  # noqa: F811
    n = 300
    lines = [make_record(DEVICE).to_json() for _ in range(n)]
    ing = _ingestor(mosquitto, pg_url)
    transport = MqttTransport(
        AgentBroker(host=mosquitto.host, port=mosquitto.port, reconnect_min_s=0.2, reconnect_max_s=1.0),
        f"agent-{new_id()[:8]}",
        outbox=(outbox := MemoryOutbox()),
        receipt_topic=topics.receipts(DEVICE),
        confirm_timeout_s=0.5,
        confirm_timeout_max_s=2.0,
    )
    transport.start()
    try:
        _publish_twice(mosquitto, lines, tmp_path)
        assert wait_for(lambda: ing.stats.committed >= 2 * n, 60), ing.stats.committed
        assert pg_count(pg_url) == n
        assert pg_count(pg_url, "SELECT COUNT(DISTINCT result_id) FROM results") == n
        assert ing.stats.results_inserted == n and ing.stats.results_duplicate == n
        assert transport.wait_connected(10)
        for _ in range(20):  # a device's outbox empties only on the collector's receipts
            transport.enqueue(topics.results(DEVICE), make_record(DEVICE).to_json().encode())
        assert transport.flush(60) and outbox.stats().acked == 20 and transport.receipts >= 1
        assert pg_count(pg_url) == n + 20
    finally:
        transport.stop()
        ing.stop()
    assert pg_count(pg_url, "SELECT COUNT(*) FROM collector_health WHERE connected = 0") == 1


def test_dead_letters_in_postgres(mosquitto, pg_url):  # noqa: F811
    ing = _ingestor(mosquitto, pg_url)
    peer = Peer(mosquitto.port, f"peer-{new_id()[:8]}")
    good = make_record(DEVICE)
    nul = replace(make_record(DEVICE, status="failed"), error="a\x00b")  # valid JSON, no PostgreSQL text
    try:
        peer.publish(topics.results(DEVICE), b"{not json")
        peer.publish(topics.results(DEVICE), nul.to_json())
        peer.publish(topics.results(DEVICE), good.to_json())
        peer.publish(topics.status(DEVICE), make_status(DEVICE).to_json())
        assert wait_for(lambda: pg_count(pg_url, "SELECT COUNT(*) FROM dead_letters") == 2, 30)
        assert wait_for(lambda: pg_count(pg_url, "SELECT COUNT(*) FROM devices") == 1, 10)
        with psycopg.connect(pg_url) as conn:
            reasons = [r for (r,) in conn.execute("SELECT reason FROM dead_letters ORDER BY id")]
        assert reasons[0].startswith("bad-json") and reasons[1].startswith("store-error")
        assert "NUL" in reasons[1]
        assert pg_count(pg_url, "SELECT COUNT(*) FROM results WHERE result_id = %s", (good.result_id,)) == 1
        assert pg_count(pg_url) == 1
    finally:
        peer.close()
        ing.stop()


def test_two_collectors_share_the_subscription_and_the_database(mosquitto, pg_url, tmp_path):  # noqa: F811
    n = 400
    lines = [make_record(DEVICE).to_json() for _ in range(n)]
    group = f"grp-{new_id()[:8]}"
    first = _ingestor(mosquitto, pg_url, shared_group=group, client_id=f"{group}-w0")
    second = _ingestor(mosquitto, pg_url, shared_group=group, control=False, client_id=f"{group}-w1")
    try:
        _publish_twice(mosquitto, lines, tmp_path)
        assert wait_for(lambda: first.stats.committed + second.stats.committed >= 2 * n, 60)
        assert first.stats.committed > 0 and second.stats.committed > 0  # both took a share
        assert pg_count(pg_url) == n
        inserted = first.stats.results_inserted + second.stats.results_inserted
        duplicate = first.stats.results_duplicate + second.stats.results_duplicate
        assert (inserted, duplicate) == (n, n)
    finally:
        second.stop()
        first.stop()
    assert pg_count(pg_url, "SELECT COUNT(*) FROM collector_health") == 2
