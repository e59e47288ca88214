"""The grid-job simulator's own error."""

from __future__ import annotations

import offload


class GridSimError(offload.OffloadError):
    """The simulation could not go on (a worker failed, a server went away)."""
