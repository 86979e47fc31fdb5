"""The `edgebench` command: one click group whose sub-commands come from agent/, collector/ and
converter/, imported only when used so that a Pi with the `agent` extra never loads the others."""

from wire import __version__

__all__ = ["__version__"]
