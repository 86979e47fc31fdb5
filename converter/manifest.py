"""Deprecated: moved to :mod:`wire.manifest`.

This path re-exports its public names for one release (until 0.2).
"""

import warnings

from wire.manifest import *  # noqa: F403

warnings.warn(
    "converter.manifest moved to wire.manifest; import it from there", DeprecationWarning, stacklevel=2
)
