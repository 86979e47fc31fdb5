"""Reports over the collector database: latency matrix, before/after comparison, operators, rendering.

``from collector.reports import ReportFilter, latency_report`` (the Python API in README.md) is resolved
lazily, so that importing one report module does not import them all."""

from __future__ import annotations

from typing import Any

__all__ = ["ReportFilter", "latency_report"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from collector.reports import latency

        return getattr(latency, name)
    raise AttributeError(f"module 'collector.reports' has no attribute {name!r}")
