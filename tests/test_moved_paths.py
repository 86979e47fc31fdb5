"""The import paths of release 0.1 that README.md showed keep working for one release, with a warning."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest

MOVED = {
    "agent.bench": ("agent.measure.bench", ["BenchOptions", "run_benchmark"]),
    "agent.facts": ("agent.probes.facts", ["device_info"]),
    "agent.schema": ("wire.schema", ["ResultRecord", "Job", "SchemaError", "SCHEMA_VERSION"]),
    "agent.topics": ("wire.topics", ["results", "check_id"]),
    "converter.manifest": ("wire.manifest", ["load_manifest", "ManifestError"]),
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_reexports_with_a_deprecation_warning(old):
    new, names = MOVED[old]
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)
    target = importlib.import_module(new)
    for name in names:
        assert getattr(module, name) is getattr(target, name)
