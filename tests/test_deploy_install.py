"""deploy/install-agent.sh into a tmp prefix (a real venv, a real pip install of this repository), the
agent.toml it writes loaded by agent/service/config.py, and the systemd units checked by `systemd-analyze
verify`."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.service.config import load_config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "install-agent.sh"
UNITS = REPO / "deploy" / "systemd"
EXCLUDE = {".git", "build", "dist", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis"}


def run_script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    # The venv is made from this interpreter, whose site-packages (--system-site-packages) hold the runtimes.
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHON": sys.executable},
    )


@dataclass(frozen=True)
class Install:
    root: Path
    args: tuple[str, ...]
    first: subprocess.CompletedProcess

    @property
    def prefix(self) -> Path:
        return self.root / "opt"

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def systemd(self) -> Path:
        return self.root / "systemd"


def copy_repo(dest: Path) -> Path:
    """A copy without .git and build dirs: pip builds a source directory in place."""

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        if any(p in EXCLUDE or p.endswith(".egg-info") for p in parts):
            return None
        return info

    archive = dest.parent / "src.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(REPO, arcname=".", filter=keep)
    dest.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Install:
    """One install for the module (~20 s: --system-site-packages avoids downloading the runtimes)."""
    root = tmp_path_factory.mktemp("install")
    src = copy_repo(root / "src")
    from wire.signing import generate_keypair

    _, pub = generate_keypair(root / "keys", "collector")
    ca = root / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot parsed by the installer\n-----END CERTIFICATE-----\n")
    args = (
        "--no-start",
        "--from", str(src),
        "--system-site-packages",
        "--prefix", str(root / "opt"),
        "--config-dir", str(root / "etc"),
        "--data-dir", str(root / "data"),
        "--systemd-dir", str(root / "systemd"),
        "--bin-dir", "",
        "--user", "",
        "--device-id", "pi-test",
        "--broker-host", "broker.example",
        "--tls",
        "--ca-file", str(ca),
        "--password", 'pa"ss\\word',
        "--trusted-key", str(pub),
    )  # fmt: skip
    first = run_script(*args, "--tags", "pi5,lab")
    assert first.returncode == 0, first.stdout + first.stderr
    return Install(root=root, args=args, first=first)


def test_written_config_loads_in_the_agent(installed):
    config = load_config(installed.etc / "agent.toml", env={})
    assert config.device_id == "pi-test"
    assert config.tags == ("pi5", "lab")
    assert config.data_dir == installed.data
    b = config.broker
    assert (b.host, b.port, b.tls, b.mqtt_version) == ("broker.example", 8883, True, 5)
    assert b.username == "pi-test" and b.password == ""
    assert b.resolved_password() == 'pa"ss\\word'
    assert Path(b.ca_file) == installed.etc / "ca.crt" and Path(b.ca_file).is_file()
    assert config.jobs.trusted_keys == (str(installed.etc / "keys" / "collector.pub"),)
    from wire.signing import load_trusted_keys

    assert len(load_trusted_keys(config.jobs.trusted_keys)) == 1


def test_secrets_are_not_world_readable(installed):
    for name in ("agent.toml", "broker.password"):
        mode = stat.S_IMODE((installed.etc / name).stat().st_mode)
        assert mode & 0o007 == 0, f"{name} is {oct(mode)}"
    assert stat.S_IMODE(installed.data.stat().st_mode) == 0o750


def test_venv_runs_edgebench_from_the_install(installed):
    edgebench = installed.prefix / "venv" / "bin" / "edgebench"
    out = subprocess.run(
        [str(edgebench), "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "0.1.0" in out.stdout
    # The agent extra's runtimes come along (from the system site here, from the index on a device).
    subprocess.run(
        [str(installed.prefix / "venv" / "bin" / "python"), "-c", "import onnxruntime, paho.mqtt, psutil"],
        check=True,
        timeout=60,
    )


def test_unit_is_installed_enabled_and_points_into_the_prefix(installed):
    unit = installed.systemd / "edgebench-agent.service"
    text = unit.read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert exec_start == (
        f"ExecStart={installed.prefix}/venv/bin/edgebench agent run --config {installed.etc}/agent.toml"
    )
    assert f"ReadWritePaths={installed.data}" in text  # custom data dir instead of StateDirectory
    assert "User=" not in text  # --user ''
    link = installed.systemd / "multi-user.target.wants" / "edgebench-agent.service"
    assert link.is_symlink() and link.resolve() == unit.resolve()


def test_installed_unit_verifies_clean(installed):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    unit = installed.systemd / "edgebench-agent.service"
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


@pytest.mark.parametrize("name", ["edgebench-agent.service", "edgebench-collector.service"])
def test_shipped_units_verify_clean(name, tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    text = (UNITS / name).read_text()
    for needed in ("Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict", "StateDirectory="):
        assert needed in text, needed
    # verify checks that ExecStart exists: point it at this machine's edgebench.
    edgebench = shutil.which("edgebench")
    assert edgebench, "the edgebench console script is not on PATH (pip install -e .)"
    (tmp_path / name).write_text(text.replace("/opt/edgebench/venv/bin/edgebench", edgebench))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_rerun_is_idempotent_and_keeps_the_old_config(installed):
    before = (installed.etc / "agent.toml").read_text()
    again = run_script(*installed.args, "--tags", "pi5,lab,kitchen")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "reusing venv" in again.stdout
    assert (installed.etc / "agent.toml.bak").read_text() == before
    assert load_config(installed.etc / "agent.toml", env={}).tags == ("pi5", "lab", "kitchen")
    assert sorted(p.name for p in installed.etc.iterdir()) == [
        "agent.toml",
        "agent.toml.bak",
        "broker.password",
        "ca.crt",
        "keys",
    ]
    # An upgrade that passes only the locations keeps the configuration as it is.
    config = (installed.etc / "agent.toml").read_text()
    where = [a for a in installed.args if a not in ("--tls",)]
    where = where[: where.index("--device-id")]  # --no-start, --from, locations
    upgrade = run_script(*where, "--keep-config")
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    assert "keeping" in upgrade.stdout and (installed.etc / "agent.toml").read_text() == config


def test_uninstall_then_purge(installed, tmp_path):
    # Runs last in this module (pytest keeps file order): it removes the install.
    where = (
        "--prefix", str(installed.prefix),
        "--config-dir", str(installed.etc),
        "--data-dir", str(installed.data),
        "--systemd-dir", str(installed.systemd),
        "--bin-dir", "",
        "--user", "",
    )  # fmt: skip
    proc = run_script("--uninstall", *where)
    assert proc.returncode == 0, proc.stderr
    assert not (installed.prefix / "venv").exists()
    assert not (installed.systemd / "edgebench-agent.service").exists()
    assert not (installed.systemd / "multi-user.target.wants" / "edgebench-agent.service").is_symlink()
    assert (installed.etc / "agent.toml").is_file()  # kept without --purge
    proc = run_script("--uninstall", "--purge", *where)
    assert proc.returncode == 0, proc.stderr
    assert not installed.etc.exists() and not installed.data.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device-id", "bad/id"], "invalid device id"),
        (["--tags", "ok,no way"], "invalid tag"),
        (["--password", "a", "--password-file", "/nonexistent"], "not both"),
        (["--ca-file", "/nonexistent/ca.crt"], "no such CA file"),
        (["--broker-port", "x"], "must be a number"),
        (["--mqtt-version", "4"], "must be 5 or 3"),
        (["--frobnicate"], "unknown option"),
    ],
)
def test_bad_flags_fail_before_installing_anything(args, message, tmp_path):
    proc = run_script(
        "--prefix", str(tmp_path / "opt"), "--config-dir", str(tmp_path / "etc"), "--no-start", *args
    )
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "opt").exists() and not (tmp_path / "etc").exists()


def test_script_is_executable_and_bash_clean():
    assert os.access(SCRIPT, os.X_OK) and os.access(REPO / "deploy" / "test-arm64.sh", os.X_OK)
    for script in (SCRIPT, REPO / "deploy" / "test-arm64.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
