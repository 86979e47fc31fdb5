"""What an agent's data directory says, read while the agent runs or not: outbox, jobs, artifact cache.

Used by ``edgebench agent status``; reads the outbox read-only and the job files, writes nothing (so it
answers on a full disk too), and says how much room the data directory's file system has left.
"""

from __future__ import annotations

import shutil
from typing import Any

from agent.config import AgentConfig
from agent.jobs import JobStore
from agent.outbox import OutboxError, read_stats

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
    cache = config.cache_dir
    files = [p for p in cache.iterdir() if p.is_file()] if cache.exists() else []
    out["cache"] = {"artifacts": len(files), "bytes": sum(p.stat().st_size for p in files)}
    try:
        usage = shutil.disk_usage(config.data_dir)
        out["disk"] = {"free_bytes": usage.free, "total_bytes": usage.total}
    except OSError:
        out["disk"] = {}
    return out
