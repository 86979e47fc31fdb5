"""What an agent's data directory says, read while the agent runs or not: outbox, jobs, artifact cache.

Used by ``edgebench agent status``; reads the outbox read-only and the job files, writes nothing (so it
answers on a full disk too), and says how much room the data directory's file system has left and
what the artifact cache evicted to make room (``cache/evictions.json``).
"""

from __future__ import annotations

import shutil
from typing import Any

from agent.delivery.outbox import OutboxError, read_stats
from agent.jobs.cache import cache_entries
from agent.jobs.evictions import EVICTIONS_FILE, read_evictions
from agent.jobs.store import JobStore
from agent.service.config import AgentConfig

__all__ = ["agent_status"]


def agent_status(config: AgentConfig) -> dict[str, Any]:
    """What the data directory says (works while the agent runs): outbox, jobs, cache."""
    out: dict[str, Any] = {"device_id": config.device_id, "data_dir": str(config.data_dir)}
    out["outbox"] = {"pending": 0, "dropped": 0, "rejected": 0, "acked": 0}
    if config.outbox_path.exists():
        try:
            s = read_stats(config.outbox_path)
        except OutboxError as exc:
            out["outbox"]["error"] = str(exc)
        else:
            out["outbox"] = {
                "pending": s.pending,
                "unconfirmed": s.unconfirmed,  # PUBACKed, waiting for the collector's receipt
                "dropped": s.dropped,
                "rejected": s.rejected,
                "acked": s.acked,
            }
            if s.last_reject_reason:
                out["outbox"]["last_reject_reason"] = s.last_reject_reason
    if config.jobs_dir.exists():
        store = JobStore(config.jobs_dir)
        out["jobs"] = store.counts()
        out["recent_jobs"] = [
            {"job_id": e.job_id, "state": e.state, "updated_at": e.updated_at, "detail": e.detail}
            for e in store.entries()[-5:]
        ]
    else:
        out["jobs"] = {}
    entries = cache_entries(config.cache_dir)
    partials = list((config.cache_dir / "partial").glob("*.part")) if config.cache_dir.exists() else []
    out["cache"] = {
        "artifacts": len(entries),
        "bytes": sum(st.st_size for _, st in entries),
        "partial_downloads": len(partials),
    }
    evicted = read_evictions(config.cache_dir / EVICTIONS_FILE)
    out["evictions"] = {
        "count": evicted.count,
        "bytes": evicted.bytes,
        "recent": [
            {"name": e.name, "file": e.file, "bytes": e.bytes, "at": e.at, "reason": e.reason}
            for e in evicted.recent[-5:]
        ],
    }
    try:
        usage = shutil.disk_usage(config.data_dir)
        out["disk"] = {"free_bytes": usage.free, "total_bytes": usage.total}
    except OSError:
        out["disk"] = {}
    return out
