"""Each extra carries only what its part needs, checked with pip in fresh venvs (no system site packages).

* ``[collector]``, really installed: no model runtime, no converter package; ``edgebench collector``,
  ``report`` and ``fleet`` run from it and every collector module imports without any agent module.
* ``[agent]``, resolved with ``pip install --dry-run --report`` (nothing installed): no SQLite, plotting
  or converter package.
* the bare install: ``import wire`` (every module) with click and cryptography only.

pip is this interpreter's, run against the venv's interpreter (``pip --python``), so it reads the
machine's configured index. The project is copied first: building it in place would write build/ and
*.egg-info into the working tree. About two minutes, mostly downloads (the collector install ~60 s).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # the collector and agent extras bring tomli there
    import tomli as tomllib

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PIP_TIMEOUT_S = 900

RUNTIMES_AND_CONVERTER = {"onnxruntime", "onnxruntime-gpu", "ai-edge-litert", "tflite-runtime", "torch"}
RUNTIMES_AND_CONVERTER |= {"onnx", "tensorflow", "scikit-learn"}
SERVER_AND_CONVERTER = {"sqlite-utils", "matplotlib", "onnx", "torch", "tensorflow", "scikit-learn"}
EVERY_PART = RUNTIMES_AND_CONVERTER | SERVER_AND_CONVERTER | {"numpy", "psutil", "paho-mqtt", "msgspec"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project as pip would get it from a clone: pyproject, README and the packages it includes."""
    dest = tmp_path_factory.mktemp("edgebench-src")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for name in ["pyproject.toml", "README.md", *(p.name for p in ROOT.glob("LICENSE*"))]:
        shutil.copy2(ROOT / name, dest / name)
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        if (ROOT / package / "__init__.py").is_file():
            shutil.copytree(ROOT / package, dest / package, ignore=junk)
    return dest


def fresh_venv(path: Path) -> Path:
    """A venv without pip and without system site packages; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    assert "include-system-site-packages = false" in (path / "pyvenv.cfg").read_text()
    return path / "bin" / "python"


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_NO_INPUT"] = "1"
    return env


def pip_install(python: Path, requirement: str, report: Path, *, dry_run: bool = False) -> set[str]:
    """``pip install`` into the venv of ``python``; the canonical names of what pip resolved."""
    args = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--report"]
    args += [str(report), *(["--dry-run", "--ignore-installed"] if dry_run else []), requirement]
    done = subprocess.run(args, capture_output=True, text=True, env=clean_env(), timeout=PIP_TIMEOUT_S)
    assert done.returncode == 0, f"pip install {requirement} failed:\n{done.stderr[-3000:]}"
    return {canonical(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}


def run_in(python: Path, code: str, cwd: Path) -> str:
    done = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, env=clean_env(), cwd=cwd, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


INSTALLED = """
import importlib.metadata as m, json
print(json.dumps(sorted(d.metadata["Name"] for d in m.distributions())))
"""

# Every collector module, then the collector's commands as a user runs them: which parts got loaded.
COLLECTOR_PROBE = """
import importlib, json, pkgutil, sys
import collector
from edgebench.cli import main
OPTIONAL = ("collector.store.postgres",)  # the `postgres` extra's modules (psycopg), not `collector`'s
for info in pkgutil.walk_packages(collector.__path__, "collector."):
    if not info.name.startswith(OPTIONAL):
        importlib.import_module(info.name)
for args in (["collector", "--help"], ["report", "--help"], ["fleet", "--help"]):
    try:
        main(args, prog_name="edgebench")
    except SystemExit as exc:
        assert exc.code == 0, (args, exc.code)
print(json.dumps(sorted(sys.modules)))
"""


def test_collector_install_has_no_runtime_and_its_commands_run(source: Path, tmp_path: Path):
    python = fresh_venv(tmp_path / "venv")
    resolved = pip_install(python, f"{source}[collector]", tmp_path / "report.json")
    installed = {canonical(n) for n in json.loads(run_in(python, INSTALLED, tmp_path))}
    assert {"sqlite-utils", "matplotlib", "paho-mqtt", "msgspec", "numpy"} <= resolved
    assert resolved <= installed
    assert not installed & RUNTIMES_AND_CONVERTER, (
        f"[collector] installed {installed & RUNTIMES_AND_CONVERTER}"
    )

    for command in ("collector", "report"):
        done = subprocess.run(
            [str(python.parent / "edgebench"), command, "--help"],
            capture_output=True,
            text=True,
            env=clean_env(),
            cwd=tmp_path,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"Usage: edgebench {command}" in done.stdout

    modules = set(json.loads(run_in(python, COLLECTOR_PROBE, tmp_path).splitlines()[-1]))
    # `agent` itself is the version edgebench/__init__ reads; no agent module beyond it.
    assert not {m for m in modules if m.startswith(("agent.", "converter"))}
    assert not {m.partition(".")[0] for m in modules} & {"onnxruntime", "onnx", "torch", "psutil"}


def test_agent_resolution_has_no_server_or_converter_package(source: Path, tmp_path: Path):
    python = fresh_venv(tmp_path / "venv")
    resolved = pip_install(python, f"{source}[agent]", tmp_path / "report.json", dry_run=True)
    assert {"onnxruntime", "numpy", "psutil", "paho-mqtt", "cryptography", "click"} <= resolved
    assert not resolved & SERVER_AND_CONVERTER, f"[agent] would install {resolved & SERVER_AND_CONVERTER}"
    installed = {canonical(n) for n in json.loads(run_in(python, INSTALLED, tmp_path))}
    assert "onnxruntime" not in installed  # a dry run: the venv is as it was


WIRE_PROBE = """
import importlib, json, pkgutil, sys
import wire
for info in pkgutil.walk_packages(wire.__path__, "wire."):
    importlib.import_module(info.name)
print(json.dumps(sorted({m.partition(".")[0] for m in sys.modules} - set(sys.stdlib_module_names))))
"""


def test_bare_install_imports_wire(source: Path, tmp_path: Path):
    python = fresh_venv(tmp_path / "venv")
    resolved = pip_install(python, str(source), tmp_path / "report.json")
    assert {"click", "cryptography"} <= resolved
    assert not resolved & EVERY_PART, f"the bare install pulled {resolved & EVERY_PART}"
    loaded = set(json.loads(run_in(python, WIRE_PROBE, tmp_path)))
    assert {"wire", "cryptography"} <= loaded  # wire.signing's cryptography, from the bare install
