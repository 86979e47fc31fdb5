"""The cross-device latency matrix as data: one :class:`MatrixRow` per device x model x variant, and the
:class:`Report` holding them (built by :func:`collector.reports.latency.latency_report`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from collector.reports.query import ReportFilter

__all__ = ["MatrixRow", "Report"]


@dataclass(frozen=True)
class MatrixRow:
    device_id: str
    model: str
    variant: str
    artifact_name: str
    artifact_sha256: str
    format: str
    precision: str
    runtime: str
    threads: int
    batch: int
    runs: int
    n: int
    p50_ms: float
    p50_ci_low_ms: float
    p50_ci_high_ms: float
    p90_ms: float
    size_bytes: int | None
    peak_mb: float | None
    energy_j: float | None
    energy_method: str | None
    accuracy_delta: float | None
    is_baseline: bool = False
    speedup: float | None = None  # baseline p50 / this p50 (same model, same device)
    recommended: bool = False
    cell_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Report:
    rows: tuple[MatrixRow, ...]
    filters: ReportFilter
    max_accuracy_drop: float | None
    generated_at: str
    results_total: int
    notes: tuple[str, ...] = ()
    hists: dict[tuple[str, str, str], np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def recommendations(self) -> dict[tuple[str, str], MatrixRow]:
        return {(r.device_id, r.model): r for r in self.rows if r.recommended}
