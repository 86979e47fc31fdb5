"""Deprecated: moved to :mod:`wire.topics`.

This path re-exports its public names for one release (until 0.2).
"""

import warnings

from wire.topics import *  # noqa: F403

warnings.warn("agent.topics moved to wire.topics; import it from there", DeprecationWarning, stacklevel=2)
