"""The agent as a real process (`python -m edgebench agent run`): kill -9 with rows pending, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from testkit.fleet_peer import FleetPeer, wait_until
from wire.schema import BenchSettings
from wire.signing import generate_keypair

DEVICE = "pi-proc"
ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, broker, pub: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'device_id = "{DEVICE}"\n'
        f'data_dir = "{tmp_path / "data"}"\n'
        "[broker]\n"
        f'host = "{broker.host}"\nport = {broker.port}\nreconnect_min_s = 0.2\nreconnect_max_s = 1.0\n'
        "[jobs]\n"
        f'trusted_keys = ["{pub}"]\nchunk_size = 1024\nchunk_timeout_s = 0.5\n'
        "[heartbeat]\ninterval_s = 1\n"
    )
    return path


def start_agent(config: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgebench",
                "agent",
                "run",
                "--config",
                str(config),
                "--log-level",
                "debug",
            ],
            stdout=out,
            stderr=out,
            cwd=ROOT,
        )


def agent_status(config: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "edgebench", "agent", "status", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_kill_9_with_rows_pending_then_restart_delivers_each_result_once(fresh_mosquitto, tmp_path, procs,
                                                                         tiny_mlp_onnx):  # fmt: skip
    key, pub = generate_keypair(tmp_path / "keys")
    config = write_config(tmp_path, fresh_mosquitto, pub)
    log = tmp_path / "agent.log"
    peer = FleetPeer(fresh_mosquitto.host, fresh_mosquitto.port, client_id="collector-kill9").start()
    try:
        procs.append(start_agent(config, log))
        assert wait_until(lambda: any(s.reason == "birth" for s in peer.statuses), 30), log.read_text()[
            -2000:
        ]
        ref = peer.add_artifact(tiny_mlp_onnx)
        settings = BenchSettings(
            preset="quick", min_runs=5, min_time_s=0.3, max_time_s=1.0, threads=(1, 2, 1)
        )
        job = peer.make_job([ref], f"device:{DEVICE}", settings)
        peer.send_job(job, key, DEVICE)
        assert wait_until(lambda: peer.event(job.job_id, "running"), 30), log.read_text()[-2000:]
        fresh_mosquitto.stop()  # the results are produced while the broker is away
        assert wait_until(lambda: agent_status(config)["jobs"].get("done") == 1, 90), log.read_text()[-3000:]
        status = agent_status(config)
        produced = [j for j in status["recent_jobs"] if j["job_id"] == job.job_id]
        assert status["outbox"]["pending"] >= 3  # 3 results (+ events) waiting for the broker
        procs[0].send_signal(signal.SIGKILL)
        assert procs[0].wait(timeout=10) == -9
        assert agent_status(config)["outbox"]["pending"] == status["outbox"]["pending"]  # nothing lost
        fresh_mosquitto.start()
        procs.append(start_agent(config, log))
        assert wait_until(lambda: len(set(peer.result_ids())) >= 3, 60), log.read_text()[-3000:]
        assert wait_until(lambda: agent_status(config)["outbox"]["pending"] == 0, 30)
        ids = peer.result_ids()
        assert len(set(ids)) == 3 and produced
        assert peer.event(job.job_id, "done") is not None
        assert {r.job_id for r in peer.results} == {job.job_id}
    finally:
        peer.stop()


def test_sigterm_aborts_the_measurement_and_exits_cleanly(fresh_mosquitto, tmp_path, procs, tiny_mlp_onnx):
    key, pub = generate_keypair(tmp_path / "keys")
    config = write_config(tmp_path, fresh_mosquitto, pub)
    log = tmp_path / "agent.log"
    with FleetPeer(fresh_mosquitto.host, fresh_mosquitto.port) as peer:
        procs.append(start_agent(config, log))
        assert wait_until(lambda: any(s.reason == "birth" for s in peer.statuses), 30), log.read_text()[
            -2000:
        ]
        ref = peer.add_artifact(tiny_mlp_onnx)
        settings = BenchSettings(preset="quick", min_runs=100000, min_time_s=60.0, max_time_s=120.0)
        job = peer.make_job([ref], f"device:{DEVICE}", settings)
        peer.send_job(job, key, DEVICE)
        assert wait_until(lambda: peer.event(job.job_id, "running"), 30), log.read_text()[-2000:]
        os.kill(procs[0].pid, signal.SIGTERM)
        assert procs[0].wait(timeout=60) == 0, log.read_text()[-3000:]
        assert wait_until(lambda: peer.event(job.job_id, "aborted"), 10)
        assert [r.status for r in peer.results] == ["aborted"]
        assert wait_until(
            lambda: any(s.reason == "shutdown" and s.state == "offline" for s in peer.statuses), 10
        )
        assert "0 message(s) left in the outbox" in log.read_text()
        assert agent_status(config)["outbox"]["pending"] == 0


def test_bad_config_is_one_clear_line(tmp_path):
    bad = tmp_path / "agent.toml"
    bad.write_text('[broker]\nport = "abc"\n')
    out = subprocess.run(
        [sys.executable, "-m", "edgebench", "agent", "run", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode != 0
    assert "[broker] port: expected an integer, got 'abc'" in out.stderr
    assert "Traceback" not in out.stderr


def test_config_env_and_flags_override_file(tmp_path):
    from agent.service.config import ConfigError, load_config

    path = tmp_path / "agent.toml"
    path.write_text('device_id = "from-file"\ntags = ["a"]\n[broker]\nport = 1000\n')
    config = load_config(
        path,
        env={"EDGEBENCH_DEVICE_ID": "from-env", "EDGEBENCH_BROKER_PORT": "2000", "EDGEBENCH_TAGS": "x, y"},
        overrides={"broker.port": 3000},
    )
    assert (config.device_id, config.broker.port, config.tags) == ("from-env", 3000, ("x", "y"))
    with pytest.raises(ConfigError, match=r"\[broker\] unknown key 'hots'"):
        load_config(None, env={}, overrides={"broker.hots": "x"})
    with pytest.raises(ConfigError, match="invalid device id"):
        load_config(None, env={"EDGEBENCH_DEVICE_ID": "bad/id"})
    with pytest.raises(ConfigError, match="mqtt_version: must be 5 or 3"):
        load_config(None, env={}, overrides={"broker.mqtt_version": "4"})
    with pytest.raises(ConfigError, match="trusted_keys: no such file"):
        load_config(None, env={}, overrides={"jobs.trusted_keys": "/nonexistent.pub"})
    assert replace(config, device_id="ok").validate().device_id == "ok"
