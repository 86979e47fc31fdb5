"""The agent's outbox as a file: what a device without a broker hands over (`edgebench agent export`).

Every row still in the outbox (results and job events the collector has not confirmed, sent or not)
becomes one JSON line, the message exactly as it would be published::

    {"topic": "edgebench/v1/devices/pi-1/results", "payload": "{\"kind\":\"result\",...}"}

``payload`` is the message's JSON text as stored (a string, so that the collector validates the very
bytes MQTT would have carried: `edgebench collector import` reads these lines). With
``include_rejected`` the rows the broker refused (kept aside with their reason) follow, each with a
``"rejected": "<reason>"`` member; the outbox keeps nothing else (confirmed rows are deleted).

The outbox is opened read-only (``mode=ro``) and read in one transaction, a consistent snapshot: a
running agent goes on writing and sending beside it (WAL), and nothing is removed from the outbox.
The output file is written beside its final name and renamed into place, so a failed export (full
disk) leaves no half file.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from agent.delivery.outbox import OutboxError
from wire import topics
from wire.errors import EdgebenchError

__all__ = ["ExportError", "ExportSummary", "export_outbox", "outbox_lines"]


class ExportError(EdgebenchError):
    """The outbox cannot be read or the export file cannot be written."""


_NAMES = {"results": "result", "events": "job event"}  # topic leaf -> what its messages are


@dataclass(frozen=True)
class ExportSummary:
    """What one export wrote: lines by topic leaf ("results", "events", ...) and rejected rows."""

    by_leaf: dict[str, int]
    rejected: int

    @property
    def lines(self) -> int:
        return sum(self.by_leaf.values())

    def describe(self) -> str:
        """``3 result(s), 4 job event(s)`` (``nothing`` for an empty outbox)."""
        order = [leaf for leaf in _NAMES if leaf in self.by_leaf] + sorted(set(self.by_leaf) - set(_NAMES))
        parts = [f"{self.by_leaf[leaf]} {_NAMES.get(leaf, leaf)}(s)" for leaf in order]
        parts += [f"{self.rejected} of them rejected by the broker"] if self.rejected else []
        return ", ".join(parts) or "nothing"


# The outbox's tables (agent.delivery.outbox_sqlite): pending rows, and rows the broker refused.
_PENDING_SQL = "SELECT topic, payload FROM outbox ORDER BY id"
_REJECTED_SQL = "SELECT topic, payload, reason FROM rejected ORDER BY id"


def _line(topic: str, payload: bytes, rejected: str | None) -> str:
    # The agent writes UTF-8 JSON (ASCII, in fact); a damaged byte is replaced, and the collector's
    # validation decides about the message.
    item: dict[str, str] = {"topic": topic, "payload": bytes(payload).decode("utf-8", "replace")}
    if rejected is not None:
        item["rejected"] = rejected
    return json.dumps(item, ensure_ascii=False, separators=(",", ":"))


def outbox_lines(
    outbox_path: str | Path, *, include_rejected: bool = False
) -> Iterator[tuple[str, str, bool]]:
    """(topic, JSON line, rejected) for each row, oldest first (the refused rows after the pending
    ones), from one read-only snapshot of the outbox file.

    OutboxError when the file is missing or is not an outbox."""
    path = Path(outbox_path)
    if not path.is_file():
        raise OutboxError(f"no outbox at {path} (has an agent run with this data directory?)")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, isolation_level=None)
    except sqlite3.Error as exc:
        raise OutboxError(f"cannot read outbox {path}: {exc}") from None
    try:
        db.execute("BEGIN")  # one snapshot for both tables
        for topic, payload in db.execute(_PENDING_SQL):
            yield topic, _line(topic, payload, None), False
        if include_rejected:
            for topic, payload, reason in db.execute(_REJECTED_SQL):
                yield topic, _line(topic, payload, reason), True
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        raise OutboxError(f"cannot read outbox {path}: {exc}") from None
    finally:
        db.close()


def _leaf(topic: str) -> str:
    try:
        return topics.parse_device_topic(topic)[1]
    except topics.TopicError:
        return "other"


def _write(outbox_path: Path, out: TextIO, include_rejected: bool) -> ExportSummary:
    by_leaf: dict[str, int] = {}
    rejected = 0
    for topic, line, refused in outbox_lines(outbox_path, include_rejected=include_rejected):
        out.write(line + "\n")
        leaf = _leaf(topic)
        by_leaf[leaf] = by_leaf.get(leaf, 0) + 1
        rejected += refused
    return ExportSummary(by_leaf, rejected)


def export_outbox(
    outbox_path: str | Path, out: str | Path | None = None, *, include_rejected: bool = False
) -> ExportSummary:
    """Write the outbox as JSON lines to ``out`` (None or "-": stdout); see the module docstring.

    Raises OutboxError (the outbox cannot be read) or ExportError (the file cannot be written)."""
    path = Path(outbox_path)
    if not path.is_file():
        raise OutboxError(f"no outbox at {path} (has an agent run with this data directory?)")
    if out is None or str(out) == "-":
        summary = _write(path, sys.stdout, include_rejected)
        sys.stdout.flush()
        return summary
    target = Path(out)
    if target.is_dir():
        raise ExportError(f"--out {target}: is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    except OSError as exc:
        raise ExportError(f"--out {target}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            summary = _write(path, f, include_rejected)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        raise ExportError(f"--out {target}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return summary
