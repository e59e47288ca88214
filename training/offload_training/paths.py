"""Where generated data and exported models go."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """Cache of generated data sets (gitignored): $OFFLOAD_DATA, else `data/` at the root."""
    path = Path(os.environ.get("OFFLOAD_DATA", REPO_ROOT / "data"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_repository() -> Path:
    return REPO_ROOT / "model_repository"
