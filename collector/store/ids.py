"""Ids given by a unique prefix: a job, result or device id as ``fleet jobs`` prints it (its first 8
characters), or any other prefix, stands for the one full id that starts with it.

An exact id always wins (a device ``pi`` next to ``pi-2``). A prefix that several ids start with is an
:class:`AmbiguousIdError` listing them; one that no id starts with is an :class:`UnknownIdError`. Both are
one line, for the CLI to print. The reports and the fleet commands resolve every id they take here
(:func:`resolve_id`, or :func:`pick_unique` on ids they already hold).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from wire.errors import EdgebenchError

__all__ = [
    "DEVICE",
    "JOB",
    "MAX_LISTED",
    "RESULT",
    "AmbiguousIdError",
    "IdError",
    "IdKind",
    "UnknownIdError",
    "matching_ids",
    "pick_unique",
    "resolve_id",
    "resolve_ids",
]

MAX_LISTED = 8  # candidates named in an ambiguity error
_TOP = "\U0010ffff"  # sorts after every character: [prefix, prefix + _TOP) holds the ids starting with it


class IdError(EdgebenchError, LookupError):
    """An id (or id prefix) that names no single id."""


class AmbiguousIdError(IdError):
    """Several ids start with the prefix (``candidates``: the first few of them)."""

    reason = "ambiguous_id"

    def __init__(self, message: str, candidates: Sequence[str]) -> None:
        super().__init__(message)
        self.candidates = tuple(candidates)


class UnknownIdError(IdError):
    """No id is, or starts with, the text."""

    reason = "unknown_id"


@dataclass(frozen=True)
class IdKind:
    """What an id names and the (table, column) pairs its ids are found in."""

    noun: str
    sources: tuple[tuple[str, str], ...]
    list_known: bool = False  # an unknown id's error lists the known ids (few and named by people)


JOB = IdKind("job", (("jobs", "job_id"), ("results", "job_id"), ("job_events", "job_id")))
RESULT = IdKind("result", (("results", "result_id"),))
DEVICE = IdKind("device", (("devices", "device_id"), ("results", "device_id")), list_known=True)


def pick_unique(text: str, candidates: Iterable[str], noun: str, *, list_known: bool = False) -> str:
    """The one id of ``candidates`` that is ``text`` or starts with it; IdError otherwise."""
    ids = sorted({c for c in candidates if c})
    if text in ids:
        return text
    matches = [c for c in ids if text and c.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise AmbiguousIdError(_ambiguous(noun, text, matches, len(matches)), matches)
    raise UnknownIdError(_unknown(noun, text, ids if list_known else None))


def _ambiguous(noun: str, text: str, matches: Sequence[str], total: int) -> str:
    shown = ", ".join(matches[:MAX_LISTED])
    more = f" and {total - MAX_LISTED} more" if total > MAX_LISTED else ""
    return f"ambiguous {noun} id {text!r}: {total} ids start with it ({shown}{more}); give more of it"


def _unknown(noun: str, text: str, known: Sequence[str] | None) -> str:
    if not text:
        return f"an empty {noun} id"
    if known is not None:
        return f"unknown {noun} {text!r} (known: {', '.join(known[:20]) or 'none'})"
    return f"unknown {noun} {text!r}: no {noun} id starts with it"


def _rows(conn: sqlite3.Connection, sql: str, params: Sequence[object]) -> list[tuple[object, ...]]:
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # a table an older schema lacks
        return []


def _distinct(
    conn: sqlite3.Connection, kind: IdKind, where: str, params: Sequence[object], limit: int
) -> set[str]:
    found: set[str] = set()
    for table, column in kind.sources:
        sql = f"SELECT DISTINCT [{column}] FROM [{table}] {where.format(c=f'[{column}]')} ORDER BY 1 LIMIT ?"
        found.update(v for (v,) in _rows(conn, sql, (*params, limit)) if isinstance(v, str))
    return found


def matching_ids(
    conn: sqlite3.Connection, kind: IdKind, prefix: str, limit: int = MAX_LISTED + 1
) -> list[str]:
    """Up to ``limit`` (-1: all) distinct ids of ``kind`` starting with ``prefix``, sorted (range scans)."""
    found = _distinct(conn, kind, "WHERE {c} >= ? AND {c} < ?", (prefix, prefix + _TOP), limit)
    out = sorted(v for v in found if v.startswith(prefix))
    return out if limit < 0 else out[:limit]


def resolve_id(conn: sqlite3.Connection, kind: IdKind, text: str) -> str:
    """The full id of ``kind`` that ``text`` is, or is the unique prefix of; IdError otherwise."""
    text = text.strip()
    if not text:
        raise UnknownIdError(_unknown(kind.noun, text, None))
    if _distinct(conn, kind, "WHERE {c} = ?", (text,), 1):
        return text
    matches = matching_ids(conn, kind, text)
    if len(matches) == 1:
        return matches[0]
    if matches:
        total = len(matches)
        if total > MAX_LISTED:  # name the first few, count them all
            total = len(matching_ids(conn, kind, text, limit=-1))
        raise AmbiguousIdError(_ambiguous(kind.noun, text, matches, total), matches)
    known = sorted(_distinct(conn, kind, "", (), 20))[:20] if kind.list_known else None
    raise UnknownIdError(_unknown(kind.noun, text, known))


def resolve_ids(conn: sqlite3.Connection, kind: IdKind, texts: Iterable[str]) -> tuple[str, ...]:
    """:func:`resolve_id` for each, in order (duplicates kept once)."""
    return tuple(dict.fromkeys(resolve_id(conn, kind, t) for t in texts))
