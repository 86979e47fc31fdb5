"""`edgebench collector serve|status|import` (thin wrappers over collector.ingest.ingestor,
collector.ingest.health and collector.ingest.file_import)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import click

from collector.config import ConfigError, load_config
from collector.options import broker_options, config_from_options
from collector.store.open import redact


@click.group("collector")
def collector_group() -> None:
    """Run the collector (MQTT -> SQLite) and check on it."""


@collector_group.command("serve")
@click.option(
    "--db",
    type=str,
    help="SQLite database (created on the first run; once a collector has used it - DB.collector/ "
    "beside it - a missing file is an error unless --create-db), or postgresql://user@host/dbname.",
)
@click.option(
    "--create-db",
    is_flag=True,
    help="Start an empty database even though a collector has used one at --db that is now missing.",
)
@click.option("--client-id", help="MQTT client id = the persistent session's name.")
@broker_options
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Worker processes sharing the results stream (MQTT 5 shared subscription). "
    "Default: 2 with MQTT 5 on 2+ cores, else 1.",
)
@click.option("--no-chunks", is_flag=True, help="Do not serve model chunks to devices.")
@click.option(
    "--batch-max",
    type=click.IntRange(1, 100000),
    default=None,
    help="Rows per transaction at most (default 1000).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on http://HOST:PORT/metrics (default: metrics_port in collector.toml; "
    "0: none).",
)
@click.option("--metrics-host", default=None, help="Address the metrics endpoint binds (default 127.0.0.1).")
@click.option("-v", "--verbose", is_flag=True)
def serve(
    db: str | None,
    create_db: bool,
    client_id: str | None,
    workers: int,
    no_chunks: bool,
    batch_max: int | None,
    metrics_port: int | None,
    metrics_host: str | None,
    verbose: bool,
    **kw: Any,
) -> None:
    """Subscribe to every device and store results, status and job events (until SIGTERM/Ctrl-C).

    Messages are acknowledged only after their rows are committed, on a persistent session, so a
    collector killed at any moment loses nothing and stores nothing twice. The database file is
    watched: deleted or replaced while running, it is restored (or merged) from the open connection;
    read-only, full or failing, nothing is acknowledged (messages wait at the broker) until it is
    writable again, and `collector status` says NOT WRITING meanwhile.
    """  # fmt: skip
    from dataclasses import replace

    from collector.service.workers import ServeError
    from collector.service.workers import serve as run_serve

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s"
    )
    config = config_from_options(db, client_id, **kw)
    if workers is None:
        from collector.service.workers import default_workers

        workers = default_workers(config)
    if batch_max:
        config = replace(config, batch_max=batch_max)
    if metrics_port is not None:
        config = replace(config, metrics_port=metrics_port)
    if metrics_host:
        config = replace(config, metrics_host=metrics_host)
    stop = threading.Event()
    stopped_by: list[str] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stopped_by.append(signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    click.echo(
        f"collector: {redact(config.db)} <- mqtt://{config.broker.host}:{config.broker.port} "
        f"(MQTT {'5' if config.broker.mqtt_version == 5 else '3.1.1'}, session {config.client_id!r}, "
        f"{workers} worker{'s' if workers > 1 else ''})",
        err=True,
    )
    if config.metrics_port:
        click.echo(
            f"collector: metrics on http://{config.metrics_host}:{config.metrics_port}/metrics", err=True
        )
    try:
        run_serve(config, stop, workers=workers, serve_chunks=not no_chunks, create_db=create_db)
    except ServeError as exc:
        raise click.ClickException(str(exc)) from None
    # every acknowledged message is committed by now: say so, so that a SIGTERM never ends in silence
    how = f" on {stopped_by[0]}" if stopped_by else ""
    stored = redact(config.db)
    click.echo(f"collector: stopped{how}; every message acknowledged is stored in {stored}", err=True)


@collector_group.command("status")
@click.option("--db", type=click.Path(dir_okay=False), help="SQLite database.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(db: str | None, config_path: str | None, as_json: bool) -> None:
    """Rows, devices online, dead letters, ingest rate and lag; NOT WRITING / STALLED (exit 1) when the
    collector cannot write the database or its pid lives but its health snapshot is stale."""
    import dataclasses
    import json

    from collector.ingest.health import collector_health, format_health
    from collector.store.sidecar import read_states
    from collector.store.sqlite import StoreError

    try:
        path = db or load_config(config_path).db
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not Path(path).exists() and not read_states(path):
        raise click.ClickException(f"no database at {path} (start `edgebench collector serve --db {path}`)")
    try:
        health = collector_health(path)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        extra = {"running": health.running, "stalled": health.stalled, "writing": not health.not_writing}
        click.echo(json.dumps({**dataclasses.asdict(health), **extra}, indent=2))
    else:
        click.echo(format_health(health))
    if health.not_writing or health.stalled or health.db_error:
        raise SystemExit(1)


@collector_group.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--db",
    type=click.Path(dir_okay=False),
    help="SQLite database (default: db in collector.toml); created if missing.",
)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="collector.toml")
def import_(files: tuple[Path, ...], db: str | None, config_path: str | None) -> None:
    """Load result files into the database without a broker: the JSON array `edgebench bench --out`
    writes, JSON lines, or `edgebench agent export`. Each record is checked as MQTT input is: valid
    ones are stored (a result already there is not stored twice), bad ones become dead letters. A file
    that cannot be read is reported and skipped (exit 1); the others are imported."""
    from collector.ingest.file_import import ImportDbError, import_files

    try:
        config = load_config(config_path, overrides={"db": db})
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        summary = import_files(
            config.db,
            files,
            max_payload_bytes=config.max_payload_bytes,
            on_error=lambda line: click.echo(f"Error: {line}", err=True),
        )
    except ImportDbError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{config.db}: {summary.line()}")
    if summary.errors:
        raise SystemExit(1)
