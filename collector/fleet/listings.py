"""What `edgebench fleet devices|jobs` list: devices (with their tags and result counts) and jobs (with
each device's latest state)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlite_utils


def device_tags(db: sqlite_utils.Database) -> dict[str, tuple[str, ...]]:
    out = {}
    for device_id, tags in db.conn.execute("SELECT device_id, tags FROM devices ORDER BY device_id"):
        try:
            parsed = json.loads(tags) if tags else []
        except ValueError:
            parsed = []
        out[device_id] = tuple(t for t in parsed if isinstance(t, str))
    return out


@dataclass(frozen=True)
class DeviceRow:
    device_id: str
    board: str
    tags: tuple[str, ...]
    online: bool
    last_seen: str
    results: int
    agent_version: str
    current_job: str
    outbox_pending: int | None = None  # from its last status: results/events not yet delivered


def list_devices(db: sqlite_utils.Database) -> list[DeviceRow]:
    counts = dict(db.conn.execute("SELECT device_id, COUNT(*) FROM results GROUP BY device_id").fetchall())
    tags = device_tags(db)
    rows = db.conn.execute(
        "SELECT device_id, board, online, last_seen, agent_version, current_job, outbox_pending FROM devices "
        "ORDER BY device_id"
    ).fetchall()
    out = [
        DeviceRow(
            d, b or "", tags.get(d, ()), bool(on), ls or "", int(counts.pop(d, 0)), av or "", cj or "", op
        )
        for d, b, on, ls, av, cj, op in rows
    ]
    # devices that sent results but never a status message (e.g. the registry was reset)
    out += [DeviceRow(d, "", (), False, "", int(n), "", "") for d, n in sorted(counts.items())]
    return out


@dataclass(frozen=True)
class JobRow:
    job_id: str
    created_at: str
    target: str
    artifacts: tuple[str, ...]
    state: str
    devices: dict[str, str]  # device -> latest agent state


def list_jobs(db: sqlite_utils.Database, limit: int = 50) -> list[JobRow]:
    jobs = db.conn.execute(
        "SELECT job_id, created_at, target, artifacts, state FROM jobs ORDER BY created_at DESC LIMIT ?",
        (limit,),
    ).fetchall()
    out = []
    for job_id, created, target, artifacts, state in jobs:
        latest = db.conn.execute(
            "SELECT device_id, state FROM job_events WHERE id IN "
            "(SELECT MAX(id) FROM job_events WHERE job_id = ? GROUP BY device_id) ORDER BY device_id",
            (job_id,),
        ).fetchall()
        try:
            names = tuple(a.get("name", "?") for a in json.loads(artifacts or "[]"))
        except (ValueError, AttributeError):
            names = ()
        out.append(JobRow(job_id, created or "", target or "", names, state or "", dict(latest)))
    return out
