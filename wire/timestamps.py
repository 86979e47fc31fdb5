"""Wire timestamps as datetimes (stdlib only): format an aware datetime the way
:func:`wire.schema.utc_now` writes it (ISO-8601 UTC, milliseconds, ``Z``) and parse one back.

Used where a time is computed rather than read off the clock (a job's ``expires_at`` = created + a
duration) or compared (an agent refusing expired jobs), so that no comparison is made on strings.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

__all__ = ["Clock", "parse_wire", "system_clock", "to_wire"]

Clock = Callable[[], datetime]  # returns an aware UTC datetime; injected wherever time decides something


def system_clock() -> datetime:
    return datetime.now(timezone.utc)


def to_wire(dt: datetime) -> str:
    """``2025-01-01T00:00:00.000Z``; ``dt`` must be timezone-aware (any zone: converted to UTC)."""
    if dt.tzinfo is None:
        raise ValueError("a wire timestamp needs a timezone-aware datetime")
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_wire(text: str) -> datetime:
    """An ISO-8601 UTC time (``...Z`` or ``+00:00``) -> aware datetime; ValueError for anything else."""
    if not isinstance(text, str):
        raise ValueError(f"not a timestamp: {text!r}")
    dt = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    if dt.utcoffset() != timedelta(0):
        raise ValueError(f"not a UTC time (Z or +00:00): {text[:40]!r}")
    return dt
