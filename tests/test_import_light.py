"""The agent stays light: importing it (and the CLI path a device uses) pulls no heavy package."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["onnx", "torch", "tensorflow", "sqlite_utils", "onnxruntime.quantization", "collector", "converter"]

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
cmd = main.get_command(None, "bench")
print(json.dumps(sorted(m for m in sys.modules)))
"""


def loaded_modules(extra: list[str]) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(extra=extra)], capture_output=True, text=True, check=True
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
