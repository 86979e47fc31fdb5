"""The demo's work folder: what one run leaves that the next must not inherit, and clearing it."""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["MARKER", "clear_previous_run"]

# What a run leaves that the next must not inherit: the database, the broker's persistence (retained
# statuses, queued jobs), each agent's data (outbox, jobs). Keys stay; artifacts are converted anew.
_RUN_STATE = ("edgebench.db", "edgebench.db-wal", "edgebench.db-shm", "edgebench.db.collector",
              "mosquitto/mosquitto.db", "devices", "logs", "report.html")  # fmt: skip
MARKER = ".edgebench-demo"  # written by every run: the folder is a demo's, its run state may go


def clear_previous_run(work: Path) -> list[str]:
    """Remove what a previous demo run left in ``work``, only in a demo's folder (:data:`MARKER`, or an
    older run's device configs) and only the demo's own names; returns the names removed."""
    if not ((work / MARKER).exists() or any(work.glob("devices/*/agent.toml"))):
        return []
    removed = []
    for name in _RUN_STATE:
        path = work / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed
