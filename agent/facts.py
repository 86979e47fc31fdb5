"""Deprecated: moved to :mod:`agent.probes.facts`.

This path re-exports its public names for one release (until 0.2).
"""

import warnings

from agent.probes.facts import *  # noqa: F403

warnings.warn(
    "agent.facts moved to agent.probes.facts; import it from there", DeprecationWarning, stacklevel=2
)
