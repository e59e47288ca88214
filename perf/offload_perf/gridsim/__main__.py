"""`python -m offload_perf.gridsim`: the grid-job simulator (see the package's doc)."""

from __future__ import annotations

import sys

from offload_perf.gridsim.cli import main

if __name__ == "__main__":  # (the spawned workers import this module too)
    sys.exit(main())
