"""One [broker] table for agent and collector (wire.broker): the same inputs give the same password
or the same error on both sides."""

from __future__ import annotations

import pytest

from agent.service.config import AgentBrokerSettings
from agent.service.config import ConfigError as AgentConfigError
from agent.service.config import load_config as load_agent_config
from collector.config import CollectorBrokerSettings
from collector.config import ConfigError as CollectorConfigError
from collector.config import load_config as load_collector_config
from wire.broker import BrokerSettings, ConfigError, check_broker


def both(tmp_path, broker_toml: str, env: dict[str, str] | None = None):
    """(agent result, collector result): the resolved password, or the ConfigError's message."""
    path = tmp_path / "config.toml"
    path.write_text(f"[broker]\n{broker_toml}\n")
    out = []
    for load in (load_agent_config, load_collector_config):
        try:
            out.append(load(path, env=env or {}).broker.resolved_password())
        except ConfigError as exc:
            out.append(f"ConfigError: {exc}")
    return tuple(out)


def test_one_config_error_class():
    assert AgentConfigError is ConfigError and CollectorConfigError is ConfigError
    assert issubclass(ConfigError, ValueError)  # the collector's callers catch ValueError
    assert issubclass(AgentBrokerSettings, BrokerSettings) and issubclass(
        CollectorBrokerSettings, BrokerSettings
    )


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "broker.password"
    path.write_text("from-the-file\n")
    return path


def test_password_or_password_file_same_on_both_sides(tmp_path, secret):
    assert both(tmp_path, 'password = "inline"') == ("inline", "inline")
    assert both(tmp_path, f'password_file = "{secret}"') == ("from-the-file", "from-the-file")
    assert both(tmp_path, "", env={"EDGEBENCH_BROKER_PASSWORD": "from-env"}) == ("from-env", "from-env")
    assert both(tmp_path, "") == ("", "")


@pytest.mark.parametrize("where", ["file", "file and env"])
def test_both_passwords_are_the_same_error(tmp_path, secret, where):
    if where == "file":
        results = both(tmp_path, f'password = "inline"\npassword_file = "{secret}"')
    else:
        results = both(tmp_path, f'password_file = "{secret}"', env={"EDGEBENCH_BROKER_PASSWORD": "x"})
    expected = "ConfigError: [broker] password and password_file: give one, not both"
    assert results == (expected, expected)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('password_file = "/nonexistent/pw"', "[broker] password_file: no such file /nonexistent/pw"),
        ("port = 70000", "[broker] port: must be 1-65535, got 70000"),
        ('host = ""', "[broker] host: must not be empty"),
        ("mqtt_version = 4", "[broker] mqtt_version: must be 5 or 3 (MQTT 3.1.1), got 4"),
        ("keepalive = 2", "[broker] keepalive: must be 5-65535 seconds, got 2"),
        ("session_expiry_s = -1", "[broker] session_expiry_s: must be >= 0"),
        ("reconnect_min_s = 5.0\nreconnect_max_s = 1.0", "[broker] reconnect_min_s/reconnect_max_s"),
        ('ca_file = "/x.crt"', "[broker] ca_file/cert_file/key_file are set but tls = false"),
        (
            'tls = true\ncert_file = "/c.pem"',
            "[broker] cert_file and key_file: a client certificate needs both",
        ),
    ],
)
def test_validation_is_the_same_on_both_sides(tmp_path, toml, message):
    agent, collector = both(tmp_path, toml)
    assert agent == collector and agent.startswith(f"ConfigError: {message}")


def test_each_side_keeps_its_reconnect_defaults(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[broker]\nhost = "mqtt.lan"\n')
    agent = load_agent_config(path, env={}).broker
    collector = load_collector_config(path, env={}).broker
    assert (agent.reconnect_min_s, agent.reconnect_max_s) == (1.0, 60.0)
    assert (collector.reconnect_min_s, collector.reconnect_max_s) == (0.5, 2.0)  # back within 2 s
    assert agent.session_expiry_s == collector.session_expiry_s == 7 * 24 * 3600


def test_collector_session_expiry_in_broker_or_at_the_top(tmp_path):
    path = tmp_path / "collector.toml"
    path.write_text("[broker]\nsession_expiry_s = 60\n")
    assert load_collector_config(path, env={}).session_expiry_s == 60
    path.write_text("session_expiry_s = 90\n")  # where it was before [broker] had it
    config = load_collector_config(path, env={})
    assert config.session_expiry_s == config.broker.session_expiry_s == 90


def test_resolved_password_refuses_both_when_built_directly(secret):
    settings = BrokerSettings(password="a", password_file=str(secret))
    with pytest.raises(ConfigError, match="give one, not both"):
        settings.resolved_password()
    with pytest.raises(ConfigError, match="give one, not both"):
        check_broker(settings)
    unreadable = BrokerSettings(password_file=str(secret.parent / "gone"))
    with pytest.raises(ConfigError, match="password_file: cannot read"):
        unreadable.resolved_password()


def test_one_paho_factory_for_both_sides(tmp_path):
    """mqttlink.client: the agent's transport and the collector's clients get the same paho setup."""
    import paho.mqtt.client as mqtt

    from collector.mqtt.client import connect_kwargs as collector_connect_kwargs
    from collector.mqtt.client import make_client as collector_make_client
    from mqttlink.client import connect_kwargs, make_client

    v5 = AgentBrokerSettings(host="h", port=1884, keepalive=20, session_expiry_s=600)
    kwargs = connect_kwargs(v5, persistent=True)
    assert (kwargs["host"], kwargs["port"], kwargs["keepalive"], kwargs["clean_start"]) == (
        "h",
        1884,
        20,
        False,
    )
    assert kwargs["properties"].SessionExpiryInterval == 600
    throwaway = connect_kwargs(v5, persistent=False)
    assert throwaway["clean_start"] is True and throwaway["properties"].SessionExpiryInterval == 0
    assert (
        collector_connect_kwargs(v5, persistent=True, session_expiry_s=5)["properties"].SessionExpiryInterval
        == 5
    )
    assert "clean_start" not in connect_kwargs(BrokerSettings(mqtt_version=3), persistent=True)

    agent = make_client(v5, "a", persistent=True, manual_ack=False, max_inflight=120, will=("t/will", b"off"))
    assert (agent._reconnect_min_delay, agent._reconnect_max_delay) == (1.0, 60.0)
    assert (agent._max_inflight_messages, agent._max_queued_messages, agent._manual_ack) == (120, 0, False)
    assert (agent._will_topic, agent._will_qos, agent._will_retain) == (b"t/will", 1, True)
    collector = collector_make_client(CollectorBrokerSettings(mqtt_version=3), "c", persistent=False)
    assert type(collector) is mqtt.Client and collector._clean_session and collector._manual_ack
    assert (collector._reconnect_min_delay, collector._reconnect_max_delay) == (0.5, 2.0)
