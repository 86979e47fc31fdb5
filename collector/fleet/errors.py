"""The fleet's one exception."""

from __future__ import annotations

from wire.errors import EdgebenchError


class FleetError(EdgebenchError):
    """A user mistake or an unusable input (unknown device, bad artifact, wrong hash, no key...)."""
