"""What `edgebench fleet devices|jobs` list: devices (with their tags, result counts and the job each is
on) and jobs (with each device's latest state), read from the job events as they arrive.

``collector serve`` stores every job event the moment it comes in, a push that waits records the job's
outcome when it ends, and heartbeats carry a device's current job every 30 s. The listings do not wait
for either of the last two: a job's state and a device's current job are worked out at read time from the
events (:func:`device_job_state`, :func:`job_state`), so a job pushed with ``--no-wait`` turns
``running`` and then ``done`` as its devices report, and a device's JOB is filled as soon as it says it
got the job."""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlite_utils

from collector.store.ids import JOB, pick_unique

# An agent's job event states (wire.schema.JobState) -> the word a push shows; the final ones end a job
# on that device (FINAL's keys), whatever arrives after them.
FINAL = {"done": "done", "failed": "failed", "rejected": "failed", "cancelled": "failed", "aborted": "failed"}
DISPLAY = {
    "received": "queued",
    "fetching": "transferring",
    "verifying": "transferring",
    "running": "running",
}
_FINAL_SQL = ", ".join(f"'{s}'" for s in FINAL)
# Per device of a job: its latest final event and its latest event (final or not), in arrival order.
_LATEST_EVENTS_SQL = (
    f"SELECT device_id, state, state IN ({_FINAL_SQL}) FROM job_events WHERE id IN "
    f"(SELECT MAX(id) FROM job_events WHERE job_id = ? GROUP BY device_id, state IN ({_FINAL_SQL})) "
    "ORDER BY device_id"
)


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
    latest = _latest_events(db)
    out = [
        DeviceRow(
            d, b or "", tags.get(d, ()), bool(on), ls or "", int(counts.pop(d, 0)), av or "",
            current_job(cj or "", ls or "", latest.get(d)), op,
        )
        for d, b, on, ls, av, cj, op in rows
    ]  # fmt: skip
    # devices that sent results but never a status message (e.g. the registry was reset)
    out += [
        DeviceRow(d, "", (), False, "", int(n), "", current_job("", "", latest.get(d)))
        for d, n in sorted(counts.items())
    ]
    return out


def _latest_events(db: sqlite_utils.Database) -> dict[str, tuple[str, bool, str]]:
    """Each device's latest job event by the device's clock: device -> (job_id, final, at); ``final``: the
    device has sent a final event for that job (so a late, reordered event changes nothing)."""
    rows = db.conn.execute(
        "SELECT device_id, job_id, state, at, EXISTS (SELECT 1 FROM job_events f WHERE f.job_id = e.job_id "
        f"AND f.device_id = e.device_id AND f.state IN ({_FINAL_SQL})) FROM (SELECT device_id, job_id, "
        "state, at, ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY at DESC, id DESC) AS n "
        "FROM job_events) e WHERE n = 1"
    ).fetchall()
    return {d: (j, s in FINAL or bool(has_final), at or "") for d, j, s, at, has_final in rows}


def current_job(heartbeat_job: str, last_seen: str, event: tuple[str, bool, str] | None) -> str:
    """The job a device is on: from its latest job event when that is newer than its last status message
    (both carry the device's own clock), else what the status said. A final event means none."""
    if event is None:
        return heartbeat_job
    job_id, final, at = event
    if at and at > last_seen:
        return "" if final else job_id
    return heartbeat_job


@dataclass(frozen=True)
class JobRow:
    job_id: str
    created_at: str
    target: str
    artifacts: tuple[str, ...]
    state: str
    devices: dict[str, str]  # device -> latest agent state


def device_job_state(events: list[tuple[str, str, bool]]) -> dict[str, str]:
    """Rows of :data:`_LATEST_EVENTS_SQL` -> device -> its state in the job: the latest final event's
    when there is one (a late, reordered event never undoes a final word), else the latest event's."""
    out: dict[str, str] = {}
    for device_id, state, final in events:
        if final or device_id not in out:
            out[device_id] = state
    return out


def job_state(stored: str, devices: dict[str, str], expected: set[str]) -> str:
    """A job's state from its devices' states (:func:`device_job_state`) and the devices its target
    reaches. ``stored`` is what the collector recorded (``published``; after a push that waited ``done``,
    ``failed`` or ``timeout``; ``unpublished``): it stands until events say more. With events: ``done``
    when every device reached is done, ``failed`` when every one is final and some is not done,
    ``running`` otherwise (a waited push's ``done``/``failed`` is kept over that)."""
    if not devices or stored == "unpublished":
        return stored
    reached = expected | set(devices)
    if all(devices.get(d) in FINAL for d in reached):
        return "done" if all(devices[d] == "done" for d in reached) else "failed"
    return stored if stored in ("done", "failed") else "running"


def _reached(target: str, tags: dict[str, tuple[str, ...]]) -> set[str]:
    """The known devices a job's target reaches now (as a push resolves it)."""
    if target == "all":
        return set(tags)
    if target.startswith("tag:"):
        return {d for d, t in tags.items() if target[4:] in t}
    if target.startswith("device:"):
        return {target[len("device:") :]}
    return set()


def list_jobs(db: sqlite_utils.Database, limit: int = 50, job: str | None = None) -> list[JobRow]:
    """The latest ``limit`` jobs, newest first; ``job``: only the one that id (or unique prefix) names
    (:class:`collector.store.ids.IdError` when it names none or several)."""
    if job is None:
        jobs = db.conn.execute(
            "SELECT job_id, created_at, target, artifacts, state FROM jobs ORDER BY created_at DESC LIMIT ?",
            (limit,),
        ).fetchall()
    else:
        known = [j for (j,) in db.conn.execute("SELECT job_id FROM jobs")]  # the jobs this collector pushed
        job_id = pick_unique(job.strip(), known, JOB.noun)
        jobs = db.conn.execute(
            "SELECT job_id, created_at, target, artifacts, state FROM jobs WHERE job_id = ?", (job_id,)
        ).fetchall()
    tags = device_tags(db)
    out = []
    for job_id, created, target, artifacts, state in jobs:
        devices = device_job_state(db.conn.execute(_LATEST_EVENTS_SQL, (job_id,)).fetchall())
        try:
            names = tuple(a.get("name", "?") for a in json.loads(artifacts or "[]"))
        except (ValueError, AttributeError):
            names = ()
        shown = job_state(state or "", devices, _reached(target or "", tags))
        out.append(JobRow(job_id, created or "", target or "", names, shown, devices))
    return out
