"""The agent stays light: importing it (and the CLI path a device uses) pulls no heavy package. The
collector loads no model runtime and no agent module (tests/test_install_extras.py checks the same
against a real `[collector]` install)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["onnx", "torch", "tensorflow", "sqlite_utils", "onnxruntime.quantization", "collector", "converter"]

RUNTIMES = ["onnxruntime", "ai_edge_litert", "tflite_runtime", "onnx", "torch", "tensorflow", "converter"]

PROBE = """
import json, sys
import agent, wire.schema, wire.topics, wire.codec
import importlib
for extra in {extra!r}:
    try:
        importlib.import_module(extra)
    except ModuleNotFoundError:
        pass
from edgebench.cli import main
for name in {commands!r}:
    cmd = main.get_command(None, name)
print(json.dumps(sorted(m for m in sys.modules)))
"""


def loaded_modules(extra: list[str], commands: tuple[str, ...] = ("bench",)) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(extra=extra, commands=commands)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(json.loads(out))


def test_import_agent_pulls_nothing_heavy():
    modules = loaded_modules(
        ["agent.cli", "agent.measure.runtimes", "agent.measure.bench", "agent.service.daemon"]
    )
    for heavy in HEAVY:
        assert heavy not in modules, f"importing the agent loaded {heavy}"
        assert not any(m.startswith(heavy + ".") for m in modules), f"importing the agent loaded {heavy}.*"


def test_probe_detects_heavy_imports():
    """The check above can fail: importing onnx shows up."""
    assert "onnx" in loaded_modules(["onnx"])


def test_import_collector_loads_no_runtime_and_no_agent_module():
    modules = loaded_modules(
        ["collector.ingest.ingestor", "collector.store.sqlite", "collector.reports.html"],
        commands=("collector", "fleet", "report"),
    )
    assert "collector.service.cli" in modules and "collector.reports.cli" in modules
    for heavy in RUNTIMES:
        assert heavy not in modules, f"importing the collector loaded {heavy}"
    # `agent` alone is the version edgebench/__init__ reads
    assert not [m for m in modules if m.startswith("agent.")], "the collector loaded agent modules"
