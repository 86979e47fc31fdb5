"""Click options every collector command that talks to the broker shares (`collector serve`,
`fleet push`, ...), and the configuration they make: collector.toml < environment < these flags."""

from __future__ import annotations

from typing import Any

import click

from collector.config import CollectorConfig, ConfigError, load_config

__all__ = ["broker_options", "config_from_options"]


def broker_options(func: Any) -> Any:
    """Broker flags shared by `collector serve` and `fleet push`."""
    options = [
        click.option("--config", "config_path", type=click.Path(dir_okay=False), help="collector.toml"),
        click.option("--broker", "broker_host", help="Broker host[:port] (default: config, localhost:1883)."),
        click.option("--port", "broker_port", type=int, help="Broker port."),
        click.option("--mqtt-version", type=click.Choice(["5", "3"]), help="5, or 3 for MQTT 3.1.1."),
        click.option("--tls/--no-tls", default=None, help="Use TLS."),
        click.option("--ca-file", type=click.Path(dir_okay=False)),
        click.option("--cert-file", type=click.Path(dir_okay=False)),
        click.option("--key-file", type=click.Path(dir_okay=False)),
        click.option("--username"),
        click.option("--password-file", type=click.Path(dir_okay=False)),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def config_from_options(db: str | None = None, client_id: str | None = None, **kw: Any) -> CollectorConfig:
    host, port = kw.get("broker_host"), kw.get("broker_port")
    if host and ":" in host:
        host, _, port_text = host.rpartition(":")
        try:
            port = port or int(port_text)
        except ValueError:
            raise click.BadParameter(
                f"invalid port in {kw['broker_host']!r}", param_hint="--broker"
            ) from None
    try:
        return load_config(
            kw.get("config_path"),
            overrides={"db": db, "client_id": client_id, "signing_key": kw.get("signing_key")},
            broker_overrides={
                "host": host,
                "port": port,
                "mqtt_version": int(kw["mqtt_version"]) if kw.get("mqtt_version") else None,
                "tls": kw.get("tls"),
                "ca_file": kw.get("ca_file"),
                "cert_file": kw.get("cert_file"),
                "key_file": kw.get("key_file"),
                "username": kw.get("username"),
                "password_file": kw.get("password_file"),
            },
        )
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
