"""`edgebench fleet enroll DEVICE`: a thin click wrapper over collector.fleet.enroll.enroll_device."""

from __future__ import annotations

from pathlib import Path

import click

from collector.fleet.enroll import DEFAULT_PASSWORD_FILE, DEPLOY_DIR, EnrollError, enroll_device


@click.command("enroll")
@click.argument("device_id", metavar="DEVICE")
@click.option("--broker-host", required=True, help="Name or address the device connects to.")
@click.option("--broker-port", type=int, default=None, help="Default: 8883 with TLS, 1883 without.")
@click.option("--tls/--no-tls", default=True, show_default=True, help="Devices connect over TLS.")
@click.option(
    "--ca-file", type=click.Path(dir_okay=False, path_type=Path), help="CA certificate of the broker."
)
@click.option(
    "--trusted-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The collector's public key (collector.pub) the agent verifies jobs with.",
)
@click.option("--tags", default="", help="Comma-separated tags for the device.")
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=str(DEFAULT_PASSWORD_FILE),
    show_default=True,
    help="mosquitto's password file.",
)
@click.option("--password", default=None, help="Default: a new random password.")
@click.option("--from", "source", default=None, help="What the device installs: a wheel, path or URL.")
@click.option(
    "--bundle",
    "bundle_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Copy the CA, the key and the install script here, to copy onto the device.",
)
def enroll(
    device_id: str,
    broker_host: str,
    broker_port: int | None,
    tls: bool,
    ca_file: Path | None,
    trusted_key: Path | None,
    tags: str,
    password_file: Path,
    password: str | None,
    source: str | None,
    bundle_dir: Path | None,
) -> None:
    """Create DEVICE's broker credentials and print the command that installs the agent on it."""
    try:
        result = enroll_device(
            device_id,
            broker_host=broker_host,
            broker_port=broker_port or (8883 if tls else 1883),
            tls=tls,
            ca_file=ca_file,
            trusted_key=trusted_key,
            tags=tuple(t.strip() for t in tags.split(",") if t.strip()),
            password_file=password_file,
            password=password,
            source=source,
            bundle_dir=bundle_dir,
        )
    except EnrollError as exc:
        raise click.ClickException(str(exc)) from None
    from wire.signing import secret_file_warning

    warning = secret_file_warning(result.password_file)
    if warning:
        click.echo(warning, err=True)
    click.echo(f"enrolled {result.device_id}: MQTT user {result.username!r} in {result.password_file}")
    click.echo("reload the broker so it reads the new password: systemctl reload mosquitto")
    if result.bundle_dir is not None:
        click.echo(f"copy {result.bundle_dir} to the device and run inside it:")
    else:
        click.echo(f"copy install-agent.sh and systemd/ from {DEPLOY_DIR} to the device; there run:")
    click.echo(f"  {result.install_command}")
