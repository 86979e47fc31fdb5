"""What a report selects: filters, times, devices, matrix cells and accuracy deltas (all parameterised:
filters are values, never SQL)."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector.store.ids import (
    DEVICE,
    JOB,
    RESULT,
    IdError,
    UnknownIdError,
    pick_unique,
    resolve_id,
    resolve_ids,
)
from collector.store.report_index import ReportError

if TYPE_CHECKING:
    from collector.reports.source import ReportSource

__all__ = [
    "ReportFilter",
    "artifact_deltas",
    "describe",
    "expand_selector",
    "iso",
    "parse_since",
    "resolve_devices",
]

Cell = tuple[Any, ...]  # (cell_id, device_id, model, variant, artifact_name, artifact_sha256, format,
#                          precision, size_bytes, runtime, threads, batch): a report_cells row


@dataclass(frozen=True)
class ReportFilter:
    model: str | None = None
    devices: tuple[str, ...] = ()
    tag: str | None = None
    since: str | None = None  # ISO timestamp (normalised by parse_since)
    until: str | None = None
    batch: int | None = 1
    threads: int | None = None
    baseline: str | None = None  # variant name that is the fp32 baseline (default: automatic)


_REL = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_since(text: str, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> str:
    """``7d``, ``12h``, ``30m`` (before now), or an ISO date / date-time (UTC when no zone is given)."""
    value = text.strip()
    rel = _REL.match(value.lower())
    if rel:
        try:
            return iso(now() - timedelta(**{_UNITS[rel.group(2)]: float(rel.group(1))}))
        except (OverflowError, ValueError):  # e.g. 9999999d: before year 1
            raise ReportError(f"the time {text!r} is too far back (the calendar starts at year 1)") from None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(
            f"cannot read the time {text!r}: use e.g. 7d, 12h, 2024-05-01 or 2024-05-01T12:00:00Z"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    try:
        return iso(dt)
    except OverflowError:  # 0001-01-01T00:00+14:00 is before year 1 in UTC
        raise ReportError(f"the time {text!r} is out of range") from None


def describe(f: ReportFilter) -> str:
    """The filters that are set, for an error message (``model='x', batch=1``; ``none``)."""
    parts = [
        f"{k}={v!r}"
        for k, v in (
            ("model", f.model),
            ("device", ",".join(f.devices) or None),
            ("tag", f.tag),
            ("since", f.since),
            ("until", f.until),
            ("batch", f.batch),
            ("threads", f.threads),
        )
        if v is not None
    ]
    return ", ".join(parts) or "none"


def _add_tags(tags: dict[str, set[str]], device_id: str, raw: str | None) -> None:
    try:
        tags.setdefault(device_id, set()).update(json.loads(raw or "[]"))
    except (ValueError, TypeError):
        tags.setdefault(device_id, set())


def _device_tags(conn: sqlite3.Connection) -> dict[str, set[str]]:
    tags: dict[str, set[str]] = {}
    for device_id, raw in conn.execute("SELECT device_id, tags FROM devices"):
        _add_tags(tags, device_id, raw)
    # Devices known only from their results (no status message yet): tags of their latest record.
    latest = conn.execute(
        "SELECT device_id, json_extract(record, '$.device.tags') FROM results "
        "WHERE rowid IN (SELECT MAX(rowid) FROM results GROUP BY device_id)"
    )
    for device_id, raw in latest:
        _add_tags(tags, device_id, raw)
    return tags


def resolve_devices(conn: sqlite3.Connection, f: ReportFilter) -> set[str]:
    """The devices a filter names (``--device``, each a device id or a unique prefix of one; ``--tag``),
    checked against the known ones; an empty set means every device. Unknown names raise
    :class:`ReportError` listing what is known, ambiguous prefixes listing what they match."""
    known_tags = _device_tags(conn)
    try:  # a unique prefix names its device
        devices = {pick_unique(d, known_tags, DEVICE.noun, list_known=True) for d in f.devices}
    except IdError as exc:
        raise ReportError(str(exc)) from None
    if f.tag is not None:
        tagged = {d for d, tags in known_tags.items() if f.tag in tags}
        if not tagged:
            all_tags = sorted(set().union(*known_tags.values())) if known_tags else []
            raise ReportError(
                f"no device has the tag {f.tag!r} (tags in use: {', '.join(all_tags) or 'none'})"
            )
        devices = (devices & tagged) if devices else tagged
        if not devices:
            raise ReportError(f"none of the devices {', '.join(f.devices)} has the tag {f.tag!r}")
    return devices


def select_cells(source: ReportSource, f: ReportFilter) -> list[Cell]:
    """The matrix cells (device x artifact x runtime x threads x batch) the filters select, from the
    report index and its not-yet-indexed tail. An unknown model raises :class:`ReportError`."""
    devices = resolve_devices(source.conn, f)
    cells = source.cells()
    if f.model is not None:
        models = {c[2] for c in cells}
        if f.model not in models:
            raise ReportError(f"unknown model {f.model!r} (known: {', '.join(sorted(models)) or 'none'})")
    return [
        c
        for c in cells
        if (f.model is None or c[2] == f.model)
        and (not devices or c[1] in devices)
        and (f.batch is None or c[11] == f.batch)
        and (f.threads is None or c[10] == f.threads)
    ]


def artifact_deltas(conn: sqlite3.Connection, manifest: Path | None) -> dict[str, float]:
    """Accuracy delta (points) per artifact sha256: the artifacts table, then the manifest's (wins)."""
    deltas: dict[str, float] = {}
    for sha, fidelity in conn.execute("SELECT sha256, fidelity FROM artifacts WHERE fidelity IS NOT NULL"):
        try:
            value = json.loads(fidelity).get("accuracy_delta")
        except (ValueError, AttributeError):
            continue
        if isinstance(value, (int, float)):
            deltas[sha] = float(value)
    if manifest is not None:
        try:
            data = json.loads(Path(manifest).read_text())
            for art in data.get("artifacts", []):
                value = (art.get("fidelity") or {}).get("accuracy_delta")
                if isinstance(value, (int, float)) and isinstance(art.get("sha256"), str):
                    deltas[art["sha256"]] = float(value)
        except (OSError, ValueError, AttributeError) as exc:
            raise ReportError(f"cannot read the manifest {manifest}: {exc}") from None
    return deltas


def expand_selector(conn: sqlite3.Connection, text: str) -> str:
    """A compare selector with every id prefix replaced by the full id it names (one line of
    :class:`ReportError` when a prefix is ambiguous): ``job:cf660957`` -> ``job:cf660957-...``,
    ``ids:PREFIX,...`` likewise (``ids:@FILE`` is read as it is), a bare prefix -> ``job:ID`` when it names
    a job, else ``ids:ID`` when it names a result. Time ranges, exact bare ids and bare text that names
    nothing are returned unchanged (the selector parser reports those)."""
    sel = text.strip()
    try:
        if sel.startswith("job:"):
            ids = [s.strip() for s in sel[4:].split(",") if s.strip()]
            return "job:" + ",".join(resolve_ids(conn, JOB, ids)) if ids else text
        if sel.startswith("ids:"):
            ids = [s.strip() for s in sel[4:].split(",") if s.strip()]
            if sel.startswith("ids:@") or not ids:
                return text
            return "ids:" + ",".join(resolve_ids(conn, RESULT, ids))
        if not sel or ".." in sel:
            return text
        return _expand_bare(conn, sel, text)
    except IdError as exc:
        raise ReportError(str(exc)) from None


def _expand_bare(conn: sqlite3.Connection, sel: str, text: str) -> str:
    exact = "SELECT 1 FROM results WHERE {} = ? LIMIT 1"
    if any(conn.execute(exact.format(c), (sel,)).fetchone() for c in ("job_id", "result_id")):
        return text
    for kind, tag in ((JOB, "job:"), (RESULT, "ids:")):
        try:
            return tag + resolve_id(conn, kind, sel)
        except UnknownIdError:
            continue
    return text
