"""`edgebench agent run|status|export` and `edgebench keys generate`: thin wrappers over
agent.service.daemon and wire.signing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from agent.service.config import DEFAULT_CONFIG_PATH, ConfigError, load_config


def _config_options(f):
    options = [
        click.option(
            "--config",
            "config_path",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help=f"agent.toml (default: {DEFAULT_CONFIG_PATH} if it exists).",
        ),
        click.option("--device-id", default=None, help="Overrides device_id (env EDGEBENCH_DEVICE_ID)."),
        click.option("--tags", default=None, help="Comma list; overrides tags (env EDGEBENCH_TAGS)."),
        click.option("--data-dir", default=None, help="Overrides data_dir (env EDGEBENCH_DATA_DIR)."),
        click.option("--broker-host", default=None, help="Overrides [broker] host."),
        click.option("--broker-port", default=None, type=int, help="Overrides [broker] port."),
        click.option("--mqtt-version", default=None, type=click.Choice(["3", "5"]), help="5 (default) or 3."),
        click.option("--username", default=None, help="Overrides [broker] username."),
        click.option("--password", default=None, help="Overrides [broker] password."),
        click.option("--trusted-key", "trusted_keys", multiple=True, help="Public key file (repeatable)."),
        click.option("--max-threads", default=None, type=int, help="Overrides [jobs] max_threads (0: none)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _load(config_path, device_id, tags, data_dir, broker_host, broker_port, mqtt_version, username, password,
          trusted_keys, max_threads):  # fmt: skip
    if config_path is None and DEFAULT_CONFIG_PATH.exists():
        config_path = DEFAULT_CONFIG_PATH
    overrides = {
        "device_id": device_id,
        "tags": tags,
        "data_dir": data_dir,
        "broker.host": broker_host,
        "broker.port": broker_port,
        "broker.mqtt_version": mqtt_version,
        "broker.username": username,
        "broker.password": password,
        "jobs.trusted_keys": ",".join(trusted_keys) if trusted_keys else None,
        "jobs.max_threads": max_threads,
    }
    try:
        return load_config(config_path, overrides=overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(name="agent")
def agent_group() -> None:
    """The device service: signed jobs in, results out through a durable outbox."""


@agent_group.command("run")
@_config_options
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on http://HOST:PORT/metrics (default: [metrics] port; 0: none).",
)
@click.option("--metrics-host", default=None, help="Address the metrics endpoint binds (default 127.0.0.1).")
def run(log_level: str, metrics_port: int | None, metrics_host: str | None, **kw) -> None:
    """Run the agent until SIGTERM/SIGINT (starts even while the broker is down)."""
    from dataclasses import replace

    from agent.service.daemon import AgentError, AgentService

    config = _load(**kw)
    if metrics_port is not None or metrics_host:
        metrics = config.metrics
        config = replace(
            config,
            metrics=replace(
                metrics,
                port=metrics.port if metrics_port is None else metrics_port,
                host=metrics_host or metrics.host,
            ),
        )
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        left = AgentService(config).run_forever()
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"agent stopped; {left} message(s) left in the outbox", err=True)


@agent_group.command("status")
@_config_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool, **kw) -> None:
    """Outbox (pending, dropped, rejected), jobs and artifact cache, read from the data directory."""
    from agent.service.status import agent_status

    info = agent_status(_load(**kw))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    o = info["outbox"]
    click.echo(f"device   {info['device_id']}  (data: {info['data_dir']})")
    click.echo(
        f"outbox   {o['pending']} pending, {o['dropped']} dropped, "
        f"{o['rejected']} rejected, {o['acked']} confirmed by the collector"
    )
    if o.get("unconfirmed"):
        click.echo(
            f"         {o['unconfirmed']} of the pending reached the broker and wait for the collector's "
            "receipt (sent again until it comes)"
        )
    if o.get("last_reject_reason"):
        click.echo(f"         last refusal: {o['last_reject_reason']}")
    jobs = ", ".join(f"{n} {state}" for state, n in sorted(info["jobs"].items())) or "none"
    click.echo(f"jobs     {jobs}")
    for job in info.get("recent_jobs", []):
        click.echo(f"         {job['job_id']}  {job['state']:<10} {job['updated_at']}  {job['detail']}")
    if o.get("error"):
        click.echo(f"         {o['error']}")
    c = info["cache"]
    partial = f", {c['partial_downloads']} partial download(s)" if c.get("partial_downloads") else ""
    click.echo(f"cache    {c['artifacts']} artifact(s), {c['bytes'] / 2**20:.1f} MB{partial}")
    ev = info.get("evictions") or {}
    if ev.get("count"):
        click.echo(f"evicted  {ev['count']} artifact(s), {ev['bytes'] / 2**20:.1f} MB in all; latest:")
        for e in ev["recent"]:
            click.echo(f"         {e['at']}  {e['name']}  {e['bytes'] / 2**20:.2f} MB  ({e['reason']})")
    d = info.get("disk") or {}
    if d:
        full = "  FULL: new results are held in memory until there is room" if d["free_bytes"] < 2**20 else ""
        click.echo(
            f"disk     {d['free_bytes'] / 2**20:.1f} MB free of {d['total_bytes'] / 2**30:.1f} GB{full}"
        )


@agent_group.command("export")
@_config_options
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the JSON lines here (default: stdout).",
)
@click.option("--all", "include_rejected", is_flag=True, help="Also the rows the broker refused.")
def export(out: Path | None, include_rejected: bool, **kw) -> None:
    """Write the outbox (results and job events the collector has not confirmed) as JSON lines, one
    message per line, for `edgebench collector import` on a device without a broker. Reads the outbox
    read-only: a running agent is not disturbed, and nothing is removed."""
    from agent.delivery.outbox import OutboxError
    from agent.service.export import ExportError, export_outbox

    config = _load(**kw)
    try:
        summary = export_outbox(config.outbox_path, out, include_rejected=include_rejected)
    except (OutboxError, ExportError) as exc:
        raise click.ClickException(str(exc)) from None
    where = out if out is not None and str(out) != "-" else "stdout"
    click.echo(
        f"exported {summary.lines} message(s) ({summary.describe()}) from {config.outbox_path} to {where}",
        err=True,
    )


@click.group(name="keys")
def keys_group() -> None:
    """Signing keys for jobs (Ed25519)."""


@keys_group.command("generate")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default="collector", show_default=True, help="File stem: NAME.key and NAME.pub.")
def generate(out_dir: Path, name: str) -> None:
    """Write a new key pair: NAME.key (private, 0600, for the collector) and NAME.pub (for the devices)."""
    from wire.signing import SignatureError, generate_keypair, key_id, load_public_key, secret_file_warning

    try:
        key_path, pub_path = generate_keypair(out_dir, name)
    except SignatureError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"private key {key_path}  (keep it on the collector)")
    click.echo(f"public key  {pub_path}  (copy to each device; [jobs] trusted_keys)")
    click.echo(f"key id      {key_id(load_public_key(pub_path))}")
    if warning := secret_file_warning(key_path):
        click.echo(warning, err=True)
