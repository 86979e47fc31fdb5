"""deploy/ansible/install-agent.yml run for real against localhost (connection=local) into a tmp prefix.

Needs `ansible-playbook` (ansible-core) on PATH or in $EDGEBENCH_ANSIBLE_PLAYBOOK; skipped otherwise: it is
not a dependency of edgebench. Installs a venv like tests/test_deploy_install.py (~20 s with system packages).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.service.config import load_config
from tests.test_deploy_install import copy_repo

REPO = Path(__file__).resolve().parents[1]
PLAYBOOK = REPO / "deploy" / "ansible" / "install-agent.yml"
ANSIBLE = os.environ.get("EDGEBENCH_ANSIBLE_PLAYBOOK") or shutil.which("ansible-playbook")

pytestmark = pytest.mark.skipif(
    ANSIBLE is None, reason="ansible-playbook not installed (pip install ansible-core to run this test)"
)


def play(inventory: Path, extra: Path, *more: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ANSIBLE, "-i", str(inventory), str(PLAYBOOK), "-e", f"@{extra}", *more],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "PYTHON": sys.executable},
    )


def test_playbook_installs_and_removes_the_agent(tmp_path):
    from wire.signing import generate_keypair

    src = copy_repo(tmp_path / "src")
    _, pub = generate_keypair(tmp_path / "keys", "collector")
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(
        "[edgebench_devices]\n"
        f"localhost ansible_connection=local ansible_python_interpreter={sys.executable} "
        'edgebench_tags=\'["x86", "ci"]\' edgebench_device_id=ansible-dev\n'
    )
    # fmt: off
    install_args = [
        "--prefix", str(tmp_path / "opt"), "--config-dir", str(tmp_path / "etc"),
        "--data-dir", str(tmp_path / "data"), "--systemd-dir", str(tmp_path / "systemd"),
        "--bin-dir", "", "--user", "", "--system-site-packages", "--from", str(src),
    ]
    # fmt: on
    extra = tmp_path / "vars.json"
    extra.write_text(
        json.dumps(
            {
                "edgebench_broker_host": "127.0.0.1",
                "edgebench_broker_port": 1883,
                "edgebench_tls": False,
                "edgebench_trusted_key": str(pub),
                "edgebench_mqtt_password": "from-the-vault",
                "edgebench_start": False,
                "edgebench_apt": False,
                "installer_dir": str(tmp_path / "installer"),
                "edgebench_extra_args": install_args,
            }
        )
    )
    syntax = subprocess.run(
        [ANSIBLE, "-i", str(inventory), str(PLAYBOOK), "--syntax-check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr

    first = play(inventory, extra)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    config = load_config(tmp_path / "etc" / "agent.toml", env={})
    assert config.device_id == "ansible-dev" and config.tags == ("x86", "ci")  # inventory vars win
    assert config.broker.resolved_password() == "from-the-vault"
    assert not (tmp_path / "installer" / "broker.password").exists()  # the plain copy is removed
    assert (tmp_path / "systemd" / "multi-user.target.wants" / "edgebench-agent.service").is_symlink()

    removed = play(inventory, extra, "-e", "edgebench_state=absent")
    assert removed.returncode == 0, removed.stdout[-3000:]
    assert not (tmp_path / "opt" / "venv").exists()
    assert not (tmp_path / "systemd" / "edgebench-agent.service").exists()
