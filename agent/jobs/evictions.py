"""What the artifact cache evicted, kept in a small file so that ``edgebench agent status`` can tell.

One JSON file (``cache/evictions.json``, written atomically: tmp, fsync, rename): running totals
(count, bytes) and the most recent evictions (name, file, bytes, when, why). It is written right after
an eviction freed space, so it has room; a write that fails anyway is logged and retried with the next
eviction (the totals are kept in memory meanwhile). Readers (:func:`read_evictions`) never write.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from wire.schema import utc_now

log = logging.getLogger("edgebench.agent.cache")

__all__ = ["EVICTIONS_FILE", "Eviction", "EvictionLog", "EvictionSummary", "read_evictions"]

EVICTIONS_FILE = "evictions.json"
SCHEMA_VERSION = 1
RECENT = 20  # evictions kept one by one; older ones only count in the totals


@dataclass(frozen=True)
class Eviction:
    name: str  # the artifact's name when the cache knows it, else its file name
    file: str  # <sha256>.<format>
    bytes: int
    at: str
    reason: str  # "cache bound", "room for <artifact>", "room for the outbox", ...
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Eviction:
        return cls(
            name=str(data["name"]),
            file=str(data.get("file", data["name"])),
            bytes=int(data["bytes"]),
            at=str(data["at"]),
            reason=str(data.get("reason", "")),
            schema_version=int(data.get("schema_version", SCHEMA_VERSION)),
        )


@dataclass(frozen=True)
class EvictionSummary:
    count: int = 0
    bytes: int = 0
    recent: tuple[Eviction, ...] = ()  # oldest first
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        body = {
            "schema_version": self.schema_version,
            "count": self.count,
            "bytes": self.bytes,
            "recent": [asdict(e) for e in self.recent],
        }
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> EvictionSummary:
        data = json.loads(text)
        return cls(
            count=int(data.get("count", 0)),
            bytes=int(data.get("bytes", 0)),
            recent=tuple(Eviction.from_dict(e) for e in data.get("recent", ())),
            schema_version=int(data.get("schema_version", SCHEMA_VERSION)),
        )

    def plus(self, evictions: Iterable[Eviction]) -> EvictionSummary:
        new = tuple(evictions)
        return EvictionSummary(
            count=self.count + len(new),
            bytes=self.bytes + sum(e.bytes for e in new),
            recent=(self.recent + new)[-RECENT:],
        )


def read_evictions(path: Path) -> EvictionSummary:
    """The summary on disk; an absent or unreadable file reads as "nothing evicted"."""
    try:
        return EvictionSummary.from_json(Path(path).read_text())
    except FileNotFoundError:
        return EvictionSummary()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("eviction log %s unreadable (%s); starting a new one", path, exc)
        return EvictionSummary()


class EvictionLog:
    def __init__(self, path: Path, *, clock: Callable[[], str] = utc_now):
        self.path = Path(path)
        self.clock = clock
        self._lock = threading.Lock()
        self.summary = read_evictions(self.path)

    def record(self, evictions: Iterable[Eviction]) -> EvictionSummary:
        new = tuple(evictions)
        with self._lock:
            if new:
                self.summary = self.summary.plus(new)
            self._write()
            return self.summary

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        try:
            with open(tmp, "w") as f:
                f.write(self.summary.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            log.warning("eviction log %s not written (%s); kept in memory", self.path, exc)
