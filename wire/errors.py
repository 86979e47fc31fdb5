"""The one base of every edgebench exception (stdlib only).

Each part raises its own subclass (``SchemaError`` here, ``BenchError`` in the agent, ``StoreError`` in
the collector, ``ConvertError`` in the converter, ...); a CLI catches :class:`EdgebenchError` and prints
its one-line message. ``reason`` is a short machine-readable code for callers that branch on the kind of
failure (the collector's dead-letter class, for example); it defaults to the class's own.
"""

from __future__ import annotations

__all__ = ["EdgebenchError"]


class EdgebenchError(Exception):
    """A user-facing problem: ``str(exc)`` is one line for people, ``exc.reason`` a code for programs."""

    reason: str = "error"

    def __init__(self, *args: object, reason: str | None = None) -> None:
        super().__init__(*args)
        if reason is not None:
            self.reason = reason
