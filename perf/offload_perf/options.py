"""Command-line options and model discovery shared by the repository-wide perf tools."""

from __future__ import annotations

import argparse
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"


def repository_parser(description: str) -> argparse.ArgumentParser:
    """--repository, --model, the stable-window settings of `offload perf`, --output."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", action="append", help="default: every model")
    parser.add_argument("--window", type=float, default=1.0, help="seconds per window")
    parser.add_argument("--stability", type=float, default=10.0, help="percent")
    parser.add_argument("--max-trials", type=int, default=8, help="windows per point at most")
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser


def models_of(repository: Path, chosen: list[str] | None = None) -> list[str]:
    """The chosen models, or every model folder (one with a config.pbtxt) of the repository."""
    return chosen or sorted(p.name for p in repository.iterdir()
                            if (p / "config.pbtxt").is_file())
