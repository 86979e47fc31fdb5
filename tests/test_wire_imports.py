"""What wire/ and mqttlink/ import from outside the project: the allow-list import-linter cannot express.

wire is stdlib plus ``cryptography`` (wire.signing); mqttlink is stdlib, wire and paho. Every import
counts: module level, inside functions and under TYPE_CHECKING. Who imports whom inside the project is
[tool.importlinter] in pyproject.toml (`lint-imports`).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}
ALLOWED: dict[str, frozenset[str]] = {
    "wire": frozenset({"wire", "cryptography"}),
    "mqttlink": frozenset({"mqttlink", "wire", "paho"}),
}


def imported_top_names(source: str) -> set[str]:
    """Top-level names of every absolute import in ``source`` (relative imports stay in the package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def foreign_imports(package: str) -> dict[str, set[str]]:
    """``{file: names}`` of what the package's files import beyond stdlib and its allow-list."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        extra = imported_top_names(path.read_text(encoding="utf-8")) - STDLIB - ALLOWED[package]
        if extra:
            found[str(path.relative_to(ROOT))] = extra
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_its_allow_list(package: str):
    assert (ROOT / package / "__init__.py").is_file(), f"{package}/ is not a package here"
    assert foreign_imports(package) == {}, f"{package} imports beyond stdlib + {sorted(ALLOWED[package])}"


def test_scan_sees_lazy_and_type_checking_imports():
    """The scan can fail: imports inside functions and under TYPE_CHECKING are found, relative ones not."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "import os.path\n"
        "from . import sibling\n"
        "if TYPE_CHECKING:\n"
        "    import numpy\n"
        "def f():\n"
        "    from agent.measure import bench\n"
        "    import onnxruntime as ort\n"
    )
    assert imported_top_names(source) - STDLIB == {"numpy", "agent", "onnxruntime"}
