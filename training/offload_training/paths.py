"""Where generated data and exported models go: relative to the current directory (a
checkout's root, where `make models` and `make data` run), so an installed offload uses the
folder it is run in, never its own install location."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """Cache of generated data sets (gitignored): $OFFLOAD_DATA, else `data/` here."""
    path = Path(os.environ.get("OFFLOAD_DATA") or "data")
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_repository() -> Path:
    """The exported models: `model_repository/` here."""
    return Path("model_repository")
