"""Enroll a device: broker credentials in mosquitto's password file, and the install command for it.

``edgebench fleet enroll DEVICE`` (collector/fleet/enroll_cli.py) is a thin wrapper over
:func:`enroll_device`. The device's MQTT username is its device id, which is what the ACL in
deploy/mosquitto/edgebench.acl matches with ``%u``, and on the fleet's TLS listener it is also the
device's client id and so its session (``use_username_as_clientid``): device ids starting with
``edgebench-`` are refused, since they would collide with the collector's own client ids
(``edgebench-collector-w<i>``, ``edgebench-push-...``). The collector's users live in a password file of
their own, for the loopback listener (:func:`set_password` on :data:`DEFAULT_COLLECTOR_PASSWORD_FILE`).
mosquitto reads the password files at start and on SIGHUP (``systemctl reload mosquitto``).
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wire.errors import EdgebenchError
from wire.topics import TopicError, check_id

__all__ = [
    "DEFAULT_COLLECTOR_PASSWORD_FILE",
    "DEFAULT_PASSWORD_FILE",
    "EnrollError",
    "Enrollment",
    "enroll_device",
    "install_command",
    "set_password",
]

DEFAULT_PASSWORD_FILE = Path("/etc/mosquitto/edgebench.passwd")  # devices: the fleet (TLS) listener
DEFAULT_COLLECTOR_PASSWORD_FILE = Path("/etc/mosquitto/edgebench-collector.passwd")  # loopback listener
RESERVED_PREFIX = "edgebench-"  # the collector's client ids; a device's session id is its device id
DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"


class EnrollError(EdgebenchError):
    """The device cannot be enrolled (bad id, missing tool or file, mosquitto_passwd failed)."""


@dataclass(frozen=True)
class Enrollment:
    device_id: str
    username: str
    password: str
    password_file: Path
    install_command: str
    bundle_dir: Path | None = None


def generate_password() -> str:
    """32 URL-safe characters (192 bits): no quoting trouble in shells, TOML or mosquitto_passwd."""
    return secrets.token_urlsafe(24)


def _mosquitto_passwd(binary: str | None) -> str:
    found = binary or shutil.which("mosquitto_passwd")
    if not found:
        raise EnrollError("mosquitto_passwd not found (Debian: apt-get install mosquitto)")
    return found


def set_password(
    password_file: Path, username: str, password: str, *, mosquitto_passwd: str | None = None
) -> None:
    """Add or update ``username`` in mosquitto's password file. A missing one is created 0600 (0640 and
    group mosquitto when run as root on a broker host, so that mosquitto can read it on a reload);
    mosquitto_passwd keeps the mode."""
    binary = _mosquitto_passwd(mosquitto_passwd)
    if ":" in username or not password or any(c in password for c in "\n\r"):
        raise EnrollError("username must not contain ':' and the password must be one non-empty line")
    password_file = Path(password_file)
    if not password_file.parent.is_dir():
        raise EnrollError(f"no such directory for the password file: {password_file.parent}")
    if not password_file.exists():
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(fd, 0o600)  # exactly, whatever the umask
        os.close(fd)
        _group_for_mosquitto(password_file)
    # -b takes the password as an argument (briefly visible in the process list of this host); mosquitto
    # 2.0's mosquitto_passwd reads it from a terminal only otherwise.
    proc = subprocess.run(
        [binary, "-b", str(password_file), username, password],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise EnrollError(
            f"mosquitto_passwd failed for {username!r} in {password_file}: {detail[-1] if detail else ''}"
        )


def _group_for_mosquitto(path: Path) -> None:
    """On a Debian broker host mosquitto runs as user mosquitto: let its group (only) read the file."""
    if os.geteuid() != 0:
        return
    try:
        import grp

        gid = grp.getgrnam("mosquitto").gr_gid
    except (ImportError, KeyError):
        return
    os.chown(path, 0, gid)
    os.chmod(path, 0o640)


def install_command(
    device_id: str,
    *,
    broker_host: str,
    broker_port: int,
    tls: bool,
    password: str,
    username: str | None = None,
    ca_file: str | None = None,
    trusted_key: str | None = None,
    tags: Sequence[str] = (),
    source: str | None = None,
    script: str = "./install-agent.sh",
) -> str:
    """The command to run on the device (as root), shell-quoted."""
    argv = ["sudo", script]
    if source:
        argv += ["--from", source]
    argv += ["--device-id", device_id]
    if tags:
        argv += ["--tags", ",".join(tags)]
    argv += ["--broker-host", broker_host, "--broker-port", str(broker_port)]
    if tls:
        argv.append("--tls")
    if ca_file:
        argv += ["--ca-file", ca_file]
    argv += ["--username", username or device_id, "--password", password]
    if trusted_key:
        argv += ["--trusted-key", trusted_key]
    return shlex.join(argv)


def enroll_device(
    device_id: str,
    *,
    broker_host: str,
    password_file: Path = DEFAULT_PASSWORD_FILE,
    broker_port: int = 8883,
    tls: bool = True,
    ca_file: Path | None = None,
    trusted_key: Path | None = None,
    tags: Sequence[str] = (),
    password: str | None = None,
    source: str | None = None,
    bundle_dir: Path | None = None,
    mosquitto_passwd: str | None = None,
) -> Enrollment:
    """Create (or reset) the device's broker credentials and build its install command.

    With ``bundle_dir``, the CA certificate, the trusted public key and deploy/install-agent.sh (with its
    systemd unit) are copied there, and the command refers to them relative to that folder: copy the folder
    to the device and run the command inside it.
    """
    try:
        check_id(device_id)
        for tag in tags:
            check_id(tag, "tag")
    except TopicError as exc:
        raise EnrollError(str(exc)) from None
    if device_id.lower().startswith(RESERVED_PREFIX):
        raise EnrollError(
            f"invalid device id {device_id!r}: ids starting with {RESERVED_PREFIX!r} are reserved for the "
            "collector's own MQTT sessions (a device's client id is its device id)"
        )
    if not broker_host:
        raise EnrollError("a broker host is needed (the name or address devices connect to)")
    for what, path in (("CA certificate", ca_file), ("trusted key", trusted_key)):
        if path is not None and not Path(path).is_file():
            raise EnrollError(f"no such {what}: {path}")
    if ca_file is not None and not tls:
        raise EnrollError("a CA certificate was given but TLS is off")
    password = password or generate_password()
    set_password(Path(password_file), device_id, password, mosquitto_passwd=mosquitto_passwd)

    ca_arg = str(ca_file) if ca_file else None
    key_arg = str(trusted_key) if trusted_key else None
    script = "./install-agent.sh"
    if bundle_dir is not None:
        bundle_dir = Path(bundle_dir)
        bundle_dir.mkdir(parents=True, exist_ok=True)
        if ca_file:
            shutil.copyfile(ca_file, bundle_dir / "ca.crt")
            ca_arg = "ca.crt"
        if trusted_key:
            shutil.copyfile(trusted_key, bundle_dir / Path(trusted_key).name)
            key_arg = Path(trusted_key).name
        if (DEPLOY_DIR / "install-agent.sh").is_file():
            shutil.copy2(DEPLOY_DIR / "install-agent.sh", bundle_dir / "install-agent.sh")
            shutil.copytree(DEPLOY_DIR / "systemd", bundle_dir / "systemd", dirs_exist_ok=True)
    command = install_command(
        device_id,
        broker_host=broker_host,
        broker_port=broker_port,
        tls=tls,
        password=password,
        ca_file=ca_arg,
        trusted_key=key_arg,
        tags=tags,
        source=source,
        script=script,
    )
    return Enrollment(
        device_id=device_id,
        username=device_id,
        password=password,
        password_file=Path(password_file),
        install_command=command,
        bundle_dir=bundle_dir,
    )
