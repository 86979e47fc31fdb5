"""End to end on loopback: `collector serve` (in-process), two real agents, `fleet push` of two variants
of a small model to both; every device x variant ends up in the database and in the report."""

from __future__ import annotations

import json
import threading

import pytest
from click.testing import CliRunner

from agent.service.config import AgentConfig, BrokerSettings, HeartbeatSettings, JobsSettings
from agent.service.daemon import AgentService
from collector.config import BrokerSettings as CollectorBroker
from collector.config import CollectorConfig
from collector.fleet.cli import fleet_group
from collector.service.workers import run_ingestor
from testkit.mqtt_peer import db_count, wait_for
from wire.signing import generate_keypair

DEVICES = ("pi-one", "pi-two")


@pytest.fixture
def fleet(fresh_mosquitto, tmp_path):
    key, pub = generate_keypair(tmp_path / "keys", "collector")
    db_path = tmp_path / "fleet.db"
    config = CollectorConfig(
        db=str(db_path),
        client_id="e2e-collector",
        signing_key=str(key),
        broker=CollectorBroker(host=fresh_mosquitto.host, port=fresh_mosquitto.port),
    )
    stop = threading.Event()
    collector = threading.Thread(
        target=run_ingestor, args=(config, stop), kwargs={"serve_chunks": True, "shared_group": None,
                                                          "control": True}, daemon=True,
    )  # fmt: skip
    collector.start()
    agents = []
    for device in DEVICES:
        agent_config = AgentConfig(
            device_id=device,
            tags=("lab",),
            data_dir=tmp_path / device,
            broker=BrokerSettings(
                host=fresh_mosquitto.host, port=fresh_mosquitto.port, reconnect_min_s=0.2, reconnect_max_s=1.0
            ),
            jobs=JobsSettings(trusted_keys=(str(pub),), chunk_size=4096, chunk_timeout_s=2.0),
            heartbeat=HeartbeatSettings(interval_s=1.0),
        ).validate()
        agents.append(AgentService(agent_config).start())
    try:
        yield config, db_path, agents
    finally:
        for a in agents:
            a.stop(flush_timeout_s=2.0, join_timeout_s=30)
        stop.set()
        collector.join(timeout=30)


@pytest.mark.slow
def test_push_two_variants_to_two_agents(fleet, tiny_mlp_onnx, tiny_mlp_tflite):
    config, db_path, _agents = fleet
    assert wait_for(lambda: db_count(db_path, "SELECT COUNT(*) FROM devices WHERE online = 1") == 2, 30)
    runner = CliRunner()
    result = runner.invoke(
        fleet_group,
        ["push", str(tiny_mlp_onnx), str(tiny_mlp_tflite), "--to", "tag:lab", "--db", str(db_path),
         "--key", config.signing_key, "--broker", f"{config.broker.host}:{config.broker.port}",
         "--preset", "quick", "--min-runs", "5", "--min-time", "0.05", "--max-time", "0.5",
         "--timeout", "240"],
    )  # fmt: skip
    print(result.output)
    assert result.exit_code == 0, result.output
    assert "2 done" in result.output and "transferring" in result.output
    # Results reach the collector through the agents' outboxes.
    cells = "SELECT COUNT(DISTINCT device_id || artifact_sha256) FROM results WHERE status = 'ok'"
    assert wait_for(lambda: db_count(db_path, cells) == 4, 60)
    assert db_count(db_path, "SELECT COUNT(DISTINCT format) FROM results") == 2
    jobs = runner.invoke(fleet_group, ["jobs", "--db", str(db_path), "--json"])
    [job] = json.loads(jobs.output)
    assert job["state"] == "done" and job["devices"] == {"pi-one": "done", "pi-two": "done"}
    devices = runner.invoke(fleet_group, ["devices", "--db", str(db_path), "--json"])
    assert {d["device_id"]: d["results"] >= 2 for d in json.loads(devices.output)} == {
        d: True for d in DEVICES
    }
    assert db_count(db_path, "SELECT COUNT(*) FROM artifacts WHERE path IS NOT NULL") == 2
    # Engineer F's report reads the same database: both devices x both variants.
    try:
        from collector.reports.cli import report_group
    except ImportError:  # pragma: no cover
        return
    report = runner.invoke(report_group, ["latency", "--db", str(db_path), "--format", "csv"])
    assert report.exit_code == 0, report.output
    for device in DEVICES:
        assert report.output.count(device) >= 2, report.output


@pytest.mark.slow
def test_offline_device_gets_job_and_chunks_from_collector_serve_later(fleet, tiny_mlp_onnx):
    config, db_path, agents = fleet
    assert wait_for(lambda: db_count(db_path, "SELECT COUNT(*) FROM devices WHERE online = 1") == 2, 30)
    late = agents[1]
    late.stop(flush_timeout_s=2.0, join_timeout_s=30)  # pi-two goes offline; its session stays
    assert wait_for(lambda: db_count(db_path, "SELECT COUNT(*) FROM devices WHERE online = 1") == 1, 30)
    result = CliRunner().invoke(
        fleet_group,
        ["push", str(tiny_mlp_onnx), "--to", "pi-two", "--db", str(db_path), "--key", config.signing_key,
         "--broker", f"{config.broker.host}:{config.broker.port}", "--preset", "quick", "--min-runs", "5",
         "--min-time", "0.05", "--max-time", "0.5", "--no-wait"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "published" in result.output
    # The push process is gone; pi-two comes back, finds the job in its session and fetches the model
    # from the chunk server inside `collector serve`.
    agents[1] = AgentService(late.config).start()
    ok = "SELECT COUNT(*) FROM results WHERE device_id = 'pi-two' AND status = 'ok'"
    assert wait_for(lambda: db_count(db_path, ok) >= 1, 90)
    assert wait_for(
        lambda: db_count(db_path, "SELECT COUNT(*) FROM job_events WHERE state = 'done'") == 1, 30
    )
    health = db_count(db_path, "SELECT chunks_served FROM collector_health")
    assert wait_for(lambda: db_count(db_path, "SELECT chunks_served FROM collector_health") > 0, 10), health
