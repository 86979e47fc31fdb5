"""`edgebench collector status`: what the database and the running collector say (read-only).

Two sources: the database (counts, the writers' ``collector_health`` rows) and the writers' state
files beside it (``<db>.collector/state-*.json``, see :mod:`collector.store.sidecar`), which still speak
when the database cannot be written. A writer whose state is not ``ok`` is NOT WRITING; a health row
older than :data:`STALE_S` from a live pid is STALLED; only otherwise "running"."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from collector.store.sidecar import WriterState, pid_alive, read_states, state_line
from collector.store.sqlite import StoreError, open_readonly

STALE_S = 15.0  # a health row this old while its pid lives: stalled (rows are written every ~1 s)


@dataclass(frozen=True)
class CollectorHealth:
    db: str
    results: int
    devices: int
    devices_online: int
    dead_letters: int
    dead_by_class: dict[str, int] = field(default_factory=dict)
    jobs: int = 0
    last_received_at: str | None = None
    collector: dict[str, object] | None = None  # the latest collector_health row, if any
    collector_age_s: float | None = None
    writers: tuple[WriterState, ...] = ()  # the state files beside the database
    db_error: str | None = None  # the database could not be read (counts are 0 then)

    @property
    def not_writing(self) -> tuple[WriterState, ...]:
        """Live writers that cannot write the database (nothing is acknowledged meanwhile)."""
        return tuple(w for w in self.writers if not w.writing and pid_alive(w.pid))

    @property
    def not_subscribed(self) -> tuple[WriterState, ...]:
        """Live writers without their subscriptions (broker down, refused, or not yet back)."""
        live = (w for w in self.writers if w.db_state != "stopped" and pid_alive(w.pid))
        return tuple(w for w in live if not w.subscribed)

    @property
    def stalled(self) -> bool:
        """The collector's pid lives but its health row is older than STALE_S."""
        c = self.collector
        if not c or not c.get("connected") or self.collector_age_s is None or self.collector_age_s < STALE_S:
            return False
        return any(pid_alive(int(p)) for p in str(c.get("pid") or "").replace(" ", "").split(",") if p)

    @property
    def running(self) -> bool:
        c = self.collector
        return bool(
            c
            and c.get("connected")
            and self.collector_age_s is not None
            and self.collector_age_s < STALE_S
            and not self.not_writing
            and not self.not_subscribed
        )


def _age_s(stamp: str | None, now: datetime) -> float | None:
    if not stamp:
        return None
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (now - then).total_seconds()


def _combine(rows: list[dict[str, object]], now: datetime) -> dict[str, object]:
    """One view of the latest collector run: workers seen within 30 s of the newest snapshot."""
    newest = _age_s(str(rows[0]["updated_at"]), now) or 0.0
    live = [r for r in rows if (_age_s(str(r["updated_at"]), now) or 0.0) <= newest + 30]
    out = dict(rows[0])

    def total(key: str) -> float:
        return sum(float(r.get(key) or 0) for r in live)  # type: ignore[arg-type]

    for key in ("received", "committed", "results_inserted", "results_duplicate", "dead_letters",
                "queue_depth", "chunks_served"):  # fmt: skip
        out[key] = int(total(key))
    out["rate_per_s"] = total("rate_per_s")
    out["lag_s"] = max(float(r.get("lag_s") or 0) for r in live)  # type: ignore[arg-type]
    out["connected"] = int(any(r.get("connected") for r in live))
    out["workers"] = len(live)
    if len(live) > 1:
        out["client_id"] = ", ".join(sorted(str(r["client_id"]) for r in live))
        out["pid"] = ", ".join(str(r["pid"]) for r in live)
    return out


def collector_health(db_path: str | Path, *, now: datetime | None = None) -> CollectorHealth:
    """Counts from the database plus the collector's own snapshot (rate, lag, queue) and the writers'
    state files. A database that is missing or unreadable while a writer reports a state gives a
    CollectorHealth with ``db_error`` (and zero counts); without any state it is a StoreError."""
    now = now or datetime.now(timezone.utc)
    writers = tuple(read_states(db_path))
    try:
        return _from_db(db_path, now, writers)
    except (StoreError, sqlite3.Error) as exc:
        if not writers:
            raise StoreError(str(exc)) from None
        return CollectorHealth(
            db=str(db_path), results=0, devices=0, devices_online=0, dead_letters=0, writers=writers,
            db_error=str(exc),
        )  # fmt: skip


def _from_db(db_path: str | Path, now: datetime, writers: tuple[WriterState, ...]) -> CollectorHealth:
    db = open_readonly(db_path)
    try:
        conn = db.conn
        tables = set(db.table_names())
        if "results" not in tables:
            raise StoreError(f"{db_path} is not an edgebench collector database (no results table)")

        def one(sql: str) -> int:
            return int(conn.execute(sql).fetchone()[0] or 0)

        dead_by_class: dict[str, int] = {}
        for reason, n in conn.execute(
            "SELECT substr(reason, 1, instr(reason || ':', ':') - 1) AS c, COUNT(*) "
            "FROM dead_letters GROUP BY c"
        ):
            dead_by_class[reason] = n
        row = None
        if "collector_health" in tables:
            cur = conn.execute("SELECT * FROM collector_health ORDER BY updated_at DESC")
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
            if rows:
                row = _combine(rows, now)
        return CollectorHealth(
            db=str(db_path),
            results=one("SELECT COUNT(*) FROM results"),
            devices=one("SELECT COUNT(*) FROM devices"),
            devices_online=one("SELECT COUNT(*) FROM devices WHERE online = 1"),
            dead_letters=sum(dead_by_class.values()),
            dead_by_class=dead_by_class,
            jobs=one("SELECT COUNT(*) FROM jobs"),
            last_received_at=conn.execute("SELECT MAX(received_at) FROM results").fetchone()[0],
            collector=row,
            collector_age_s=_age_s(row.get("updated_at") if row else None, now),
            writers=writers,
        )
    finally:
        db.close()


def format_health(h: CollectorHealth) -> str:
    lines = [f"database        {h.db}" + (f" (cannot be read: {h.db_error})" if h.db_error else "")]
    lines += [f"collector       {state_line(w)}" for w in h.not_writing]
    lines += [
        f"collector       NOT SUBSCRIBED ({w.client_id}, pid {w.pid}): {w.broker}; the broker drops what "
        "arrives for it meanwhile (devices keep it until the collector's receipt)"
        for w in h.not_subscribed
    ]
    if h.db_error:
        return "\n".join(lines)
    lines += [
        f"results         {h.results}",
        f"devices         {h.devices} ({h.devices_online} online)",
        f"jobs            {h.jobs}",
        f"dead letters    {h.dead_letters}"
        + (
            " (" + ", ".join(f"{k} {v}" for k, v in sorted(h.dead_by_class.items())) + ")"
            if h.dead_by_class
            else ""
        ),
        f"last result     {h.last_received_at or '-'}",
    ]
    c = h.collector
    if c is None:
        lines.append("collector       never ran against this database")
    else:
        age = h.collector_age_s or 0
        if h.not_writing or h.not_subscribed:
            state = "NOT WRITING (above)" if h.not_writing else "NOT SUBSCRIBED (above)"
        elif h.stalled:
            state = f"STALLED: its pid lives but its last health snapshot is {age:.0f}s old"
        else:
            state = "running" if h.running else f"not running (last seen {age:.0f}s ago)"
        lines += [
            f"collector       {state}: {c.get('client_id')} pid {c.get('pid')}, since {c.get('started_at')}",
            f"ingest rate     {float(c.get('rate_per_s') or 0):.0f} messages/s",
            f"lag             {float(c.get('lag_s') or 0):.3f} s (oldest message of the last batch), "
            f"queue {c.get('queue_depth')}",
            f"received        {c.get('received')} messages, committed {c.get('committed')}, "
            f"duplicates absorbed {c.get('results_duplicate')}, chunks served {c.get('chunks_served')}",
        ]
    return "\n".join(lines)
