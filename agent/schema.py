"""Deprecated: moved to :mod:`wire.schema`.

This path re-exports its public names for one release (until 0.2).
"""

import warnings

from wire.schema import *  # noqa: F403

warnings.warn("agent.schema moved to wire.schema; import it from there", DeprecationWarning, stacklevel=2)
