"""The Prometheus endpoints, scraped over HTTP: a real `collector serve` (2 workers) and a real
`agent run` against a real mosquitto, each on a free loopback port; the values move as messages arrive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgebench.broker import free_port
from testkit.fleet_peer import FleetPeer
from testkit.mqtt_peer import Peer, wait_for
from testkit.records import make_record, make_status
from wire import topics
from wire.schema import BenchSettings
from wire.signing import generate_keypair

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "pi-metrics"

Samples = dict[tuple[str, frozenset], float]


def scrape(port: int) -> Samples:
    """GET /metrics: {(sample name, labels): value}; {} while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(ls) for (n, ls) in samples if n == name]


def start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edgebench", *args],
            stdout=out,
            stderr=out,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )


def start_collector(broker, db: Path, port: int, log: Path, *extra: str) -> subprocess.Popen:
    return start(
        ["collector", "serve", "--db", str(db), "--broker", f"127.0.0.1:{broker.port}",
         "--client-id", "metrics-test", "--workers", "2", "--metrics-port", str(port), *extra],
        log,
    )  # fmt: skip


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def collector_ready(port: int, workers: int = 2) -> bool:
    s = scrape(port)
    return total(s, "edgebench_collector_broker_subscribed") == workers and bool(
        series(s, "edgebench_collector_messages_committed_total")
    )


def test_collector_metrics_count_what_arrives_across_both_workers(fresh_mosquitto, tmp_path, procs):
    port, log = free_port(), tmp_path / "collector.log"
    procs.append(start_collector(fresh_mosquitto, tmp_path / "m.db", port, log))
    assert wait_for(lambda: collector_ready(port), 60), log.read_text()[-3000:]
    before = scrape(port)
    assert total(before, "edgebench_collector_workers") == 2
    assert total(before, "edgebench_collector_database_up") == 1
    assert total(before, "edgebench_collector_results_inserted_total") == 0
    assert total(before, "edgebench_collector_writer_errors") == 0
    assert {d["worker"] for d in series(before, "edgebench_collector_writer_state")} == {
        "metrics-test-w0",
        "metrics-test-w1",
    }
    assert total(before, "edgebench_collector_worker_resident_memory_bytes") > 0

    records = [make_record("dev-m1").to_json() for _ in range(40)]
    peer = Peer(fresh_mosquitto.port, "metrics-publisher")
    try:
        peer.publish(topics.status("dev-m1"), make_status("dev-m1").to_json(), retain=True)
        for line in records + records[:5]:  # 5 copies: absorbed, counted as duplicates
            peer.publish(topics.results("dev-m1"), line)
        peer.publish(topics.results("dev-m1"), b"{not json")  # a dead letter
    finally:
        peer.close()

    def settled() -> bool:
        s = scrape(port)
        return (
            total(s, "edgebench_collector_results_inserted_total") == 40
            and total(s, "edgebench_collector_results_duplicate_total") == 5
            and total(s, "edgebench_collector_dead_letters_total") == 1
        )

    assert wait_for(settled, 30), (scrape(port), log.read_text()[-2000:])
    after = scrape(port)
    assert total(after, "edgebench_collector_messages_received_total") >= 47
    assert total(after, "edgebench_collector_messages_committed_total") >= 47
    assert total(after, "edgebench_collector_devices_online") == 1
    assert total(after, "edgebench_collector_devices") == 1
    [dead] = series(after, "edgebench_collector_dead_letters_total")
    assert dead["reason"]  # the reason class, e.g. "invalid-json"
    assert total(after, "edgebench_collector_queue_depth") == 0
    assert all(v >= 0 for (n, _), v in after.items() if n == "edgebench_collector_ingest_lag_seconds")
    assert total(after, "edgebench_collector_worker_cpu_seconds_total") > 0


def test_collector_metrics_port_taken_is_one_clear_line(mosquitto, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "edgebench", "collector", "serve", "--db", str(tmp_path / "t.db"),
             "--broker", f"127.0.0.1:{mosquitto.port}", "--workers", "1", "--metrics-port", str(port)],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
    assert out.returncode != 0
    assert f"metrics endpoint 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr


def write_agent_config(tmp_path: Path, broker, pub: Path, metrics_port: int) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'device_id = "{DEVICE}"\n'
        f'data_dir = "{tmp_path / "data"}"\n'
        "[broker]\n"
        f'host = "{broker.host}"\nport = {broker.port}\nreconnect_min_s = 0.2\nreconnect_max_s = 1.0\n'
        "[jobs]\n"
        f'trusted_keys = ["{pub}"]\nchunk_size = 1024\nchunk_timeout_s = 0.5\n'
        "[heartbeat]\ninterval_s = 1\n"
        f"[metrics]\nport = {metrics_port}\n"
    )
    return path


@pytest.mark.slow
def test_agent_and_collector_metrics_follow_one_job(fresh_mosquitto, tmp_path, procs, tiny_mlp_onnx):
    """A job runs on a real agent; the real collector stores its results and sends the receipts: the
    agent's outbox counters (sent, confirmed, pending) and job state move, and so do the collector's."""
    key, pub = generate_keypair(tmp_path / "keys")
    agent_port, collector_port = free_port(), free_port()
    config = write_agent_config(tmp_path, fresh_mosquitto, pub, agent_port)  # [metrics] port in agent.toml
    agent_log, collector_log = tmp_path / "agent.log", tmp_path / "collector.log"
    procs.append(
        start_collector(fresh_mosquitto, tmp_path / "m.db", collector_port, collector_log, "--no-chunks")
    )
    assert wait_for(lambda: collector_ready(collector_port), 60), collector_log.read_text()[-3000:]
    peer = FleetPeer(fresh_mosquitto.host, fresh_mosquitto.port)  # signs the job, serves the chunks
    peer.send_receipts = False  # the collector's receipts confirm
    with peer:
        procs.append(start(["agent", "run", "--config", str(config)], agent_log))
        assert wait_for(lambda: total(scrape(agent_port), "edgebench_agent_broker_connected") == 1, 60), (
            agent_log.read_text()[-3000:]
        )
        idle = scrape(agent_port)
        assert total(idle, "edgebench_agent_info", device_id=DEVICE) == 1
        assert total(idle, "edgebench_agent_outbox_pending") == 0
        assert total(idle, "edgebench_agent_job_running") == 0
        assert total(idle, "edgebench_agent_disk_free_bytes") > 0
        assert not series(idle, "edgebench_agent_last_job")

        settings = BenchSettings(
            preset="quick", min_runs=5, min_time_s=0.3, max_time_s=1.0, threads=(1, 2, 1)
        )
        job = peer.make_job([peer.add_artifact(tiny_mlp_onnx)], f"device:{DEVICE}", settings)
        peer.send_job(job, key, DEVICE)

        def job_done() -> bool:
            s = scrape(agent_port)
            return total(s, "edgebench_agent_last_job", job_id=job.job_id, state="done") == 1 and (
                total(s, "edgebench_agent_outbox_pending") == 0
            )

        assert wait_for(job_done, 120), (scrape(agent_port), agent_log.read_text()[-3000:])
        done = scrape(agent_port)
        # 3 results and the job's events, each taken by the broker and confirmed by the collector
        assert total(done, "edgebench_agent_outbox_confirmed_total") >= 3 + 2
        assert total(done, "edgebench_agent_outbox_sent_total") == total(
            done, "edgebench_agent_outbox_confirmed_total"
        )
        assert total(done, "edgebench_agent_outbox_unconfirmed") == 0
        assert total(done, "edgebench_agent_receipts_total") >= 1
        assert total(done, "edgebench_agent_jobs", state="done") == 1
        assert total(done, "edgebench_agent_last_job_updated_timestamp_seconds") > 0

    assert wait_for(
        lambda: total(scrape(collector_port), "edgebench_collector_results_inserted_total") == 3, 30
    )
    collected = scrape(collector_port)
    assert total(collected, "edgebench_collector_devices_online") == 1
    assert total(collected, "edgebench_collector_messages_committed_total") >= 3 + 2 + 1  # + a status


def test_agent_without_a_metrics_port_never_imports_prometheus_client(tmp_path):
    """The agent stays light: started and stopped (no broker listening) without loading it."""
    code = (
        "import sys\n"
        "from agent.service.config import load_config\n"
        "from agent.service.daemon import AgentService\n"
        "from wire.schema import DeviceInfo\n"
        f"overrides = {{'data_dir': {str(tmp_path)!r}, 'device_id': 'light', 'broker.port': {free_port()}}}\n"
        "config = load_config(None, env={}, overrides=overrides)\n"
        "service = AgentService(config, device=DeviceInfo(device_id='light')).start()\n"
        "service.stop(flush_timeout_s=0.1)\n"
        "assert config.metrics.port == 0\n"
        "assert 'prometheus_client' not in sys.modules, 'prometheus_client was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_metrics_settings_in_the_config_files(tmp_path):
    from agent.service.config import ConfigError as AgentConfigError
    from agent.service.config import load_config as load_agent
    from collector.config import ConfigError, load_config

    path = tmp_path / "collector.toml"
    path.write_text('metrics_port = 9464\nmetrics_host = "0.0.0.0"\n')
    config = load_config(path, env={})
    assert (config.metrics_port, config.metrics_host) == (9464, "0.0.0.0")
    assert load_config(None, env={}).metrics_port == 0  # off unless asked for
    path.write_text("metrics_port = 70000\n")
    with pytest.raises(ConfigError, match=r"metrics_port must be 0\.\.65535"):
        load_config(path, env={})
    agent = tmp_path / "agent.toml"
    agent.write_text('[metrics]\nport = 9465\nhost = "0.0.0.0"\n')
    assert load_agent(agent, env={}).metrics.port == 9465
    with pytest.raises(AgentConfigError, match=r"\[metrics\] port: must be 0\.\.65535"):
        load_agent(None, env={}, overrides={"metrics.port": "-1"})
