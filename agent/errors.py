"""The measurement engine's own exception (the CLI turns it into a one-line click error)."""

from __future__ import annotations

from wire.errors import EdgebenchError


class BenchError(EdgebenchError):
    """A user-facing problem with a model, its inputs or the options: one line, no traceback."""
