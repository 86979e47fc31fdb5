"""The converter's one exception class: a user-facing, one-line reason (the CLI prints it, no traceback)."""

from __future__ import annotations


class ConvertError(Exception):
    """Bad input or a pass that cannot run; the message says what and, where it helps, which pass/op."""
