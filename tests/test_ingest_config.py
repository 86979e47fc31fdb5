"""collector.config: file < environment < flags, with clear errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from collector.config import ConfigError, load_config
from collector.service.cli import collector_group


def test_file_env_and_overrides(tmp_path):
    path = tmp_path / "collector.toml"
    path.write_text(
        'db = "/data/e.db"\nclient_id = "c1"\n[broker]\nhost = "mqtt.lan"\nport = 8883\ntls = true\n'
    )
    config = load_config(path, env={})
    assert (config.db, config.client_id, config.broker.host, config.broker.port, config.broker.tls) == (
        "/data/e.db", "c1", "mqtt.lan", 8883, True,
    )  # fmt: skip
    env = {
        "EDGEBENCH_BROKER_HOST": "envhost",
        "EDGEBENCH_COLLECTOR_DB": "/env.db",
        "EDGEBENCH_BROKER_PORT": "1999",
    }
    config = load_config(path, env=env, overrides={"db": None}, broker_overrides={"port": 1234})
    assert (config.db, config.broker.host, config.broker.port) == ("/env.db", "envhost", 1234)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("db = 3\n", "db must be str"),
        ("nope = 1\n", "unknown setting 'nope'"),
        ("[broker]\nport = 'x'\n", "port must be int"),
        ("[broker]\nmqtt_version = 4\n", "mqtt_version: must be 5 or 3"),
        ("db = \n", "invalid TOML"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})
    result = CliRunner().invoke(collector_group, ["serve", "--config", str(path)])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_bad_env_port():
    with pytest.raises(ConfigError, match="EDGEBENCH_BROKER_PORT must be an integer"):
        load_config(None, env={"EDGEBENCH_BROKER_PORT": "http"})
