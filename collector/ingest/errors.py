"""The ingest service's exception."""

from __future__ import annotations

from wire.errors import EdgebenchError

__all__ = ["IngestError"]


class IngestError(EdgebenchError, RuntimeError):
    """The collector cannot start (database, broker settings)."""
