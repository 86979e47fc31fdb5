"""`edgebench collector status`: what the database and the running collector say (read-only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from collector.store import StoreError, open_readonly


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

    @property
    def running(self) -> bool:
        c = self.collector
        return bool(
            c and c.get("connected") and self.collector_age_s is not None and self.collector_age_s < 30
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
    """Counts from the database plus the collector's own snapshot (rate, lag, queue)."""
    now = now or datetime.now(timezone.utc)
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
        )
    finally:
        db.close()


def format_health(h: CollectorHealth) -> str:
    lines = [
        f"database        {h.db}",
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
        state = "running" if h.running else "not running (last seen %.0fs ago)" % (h.collector_age_s or 0)
        lines += [
            f"collector       {state}: {c.get('client_id')} pid {c.get('pid')}, since {c.get('started_at')}",
            f"ingest rate     {float(c.get('rate_per_s') or 0):.0f} messages/s",
            f"lag             {float(c.get('lag_s') or 0):.3f} s (oldest message of the last batch), "
            f"queue {c.get('queue_depth')}",
            f"received        {c.get('received')} messages, committed {c.get('committed')}, "
            f"duplicates absorbed {c.get('results_duplicate')}, chunks served {c.get('chunks_served')}",
        ]
    return "\n".join(lines)
