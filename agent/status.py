"""What an agent's data directory says, read while the agent runs or not: outbox, jobs, artifact cache.

Used by ``edgebench agent status``; opens the outbox and the job files read-only in effect (no writes).
"""

from __future__ import annotations

from typing import Any

from agent.config import AgentConfig
from agent.jobs import JobStore
from agent.outbox import SqliteOutbox

__all__ = ["agent_status"]


def agent_status(config: AgentConfig) -> dict[str, Any]:
    """What the data directory says (works while the agent runs): outbox, jobs, cache."""
    out: dict[str, Any] = {"device_id": config.device_id, "data_dir": str(config.data_dir)}
    if config.outbox_path.exists():
        box = SqliteOutbox(config.outbox_path)
        try:
            s = box.stats()
        finally:
            box.close()
        out["outbox"] = {"pending": s.pending, "dropped": s.dropped, "rejected": s.rejected, "acked": s.acked}
        if s.last_reject_reason:
            out["outbox"]["last_reject_reason"] = s.last_reject_reason
    else:
        out["outbox"] = {"pending": 0, "dropped": 0, "rejected": 0, "acked": 0}
    if config.jobs_dir.exists():
        store = JobStore(config.jobs_dir)
        out["jobs"] = store.counts()
        out["recent_jobs"] = [
            {"job_id": e.job_id, "state": e.state, "updated_at": e.updated_at, "detail": e.detail}
            for e in store.entries()[-5:]
        ]
    else:
        out["jobs"] = {}
    cache = config.cache_dir
    files = [p for p in cache.iterdir() if p.is_file()] if cache.exists() else []
    out["cache"] = {"artifacts": len(files), "bytes": sum(p.stat().st_size for p in files)}
    return out
