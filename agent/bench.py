"""Deprecated: moved to :mod:`agent.measure.bench`.

This path re-exports its public names for one release (until 0.2).
"""

import warnings

from agent.measure.bench import *  # noqa: F403

warnings.warn(
    "agent.bench moved to agent.measure.bench; import it from there", DeprecationWarning, stacklevel=2
)
