"""`offload train`: regenerate data, train and export the physics models.

    offload train                       # all three, into model_repository/
    offload train --quick --repository /tmp/smoke   # a small smoke run
    offload train --model jet_tagger
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

from offload_training.paths import model_repository

#: model name -> module with build(repository, *, quick, workers, seed) -> metrics
PIPELINES = {
    "jet_tagger": "offload_training.tagger.pipeline",
    "jet_energy_regression": "offload_training.regression.pipeline",
    "calo_shower_generator": "offload_training.showers.pipeline",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", choices=list(PIPELINES),
                        help="train only this model (repeatable; default: all)")
    parser.add_argument("--repository", type=Path, default=None,
                        help="where to export (default: model_repository/, or "
                             "build/models-quick/ with --quick; in the current directory)")
    parser.add_argument("--quick", action="store_true",
                        help="small data and one epoch: a smoke run, not a usable model")
    parser.add_argument("--workers", type=int, default=None,
                        help="data-generation processes (default: one per core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", type=int, action="append", dest="versions",
                        metavar="N", help="with --model jet_tagger: build only this version "
                                          "(repeatable; default: all); the others are kept "
                                          "as exported")
    parser.add_argument("--ceiling", action="store_true",
                        help="with --model jet_tagger: also train version 2's network on "
                             "generator-level constituents (a study for the model card)")


def run(args: argparse.Namespace) -> int:
    default = Path("build") / "models-quick" if args.quick else model_repository()
    if (args.versions or args.ceiling) and args.model != ["jet_tagger"]:
        raise SystemExit("offload train: --version and --ceiling apply to one model: add "
                         "--model jet_tagger")
    repository = (args.repository or default).resolve()
    repository.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name in args.model or list(PIPELINES):
        started = time.perf_counter()
        print(f"== {name} -> {repository / name}", flush=True)
        build = importlib.import_module(PIPELINES[name]).build
        options = {"versions": args.versions} if args.versions else {}
        if args.ceiling:
            options["ceiling"] = True
        build(repository, quick=args.quick, workers=args.workers, seed=args.seed, **options)
        summary[name] = {"seconds": round(time.perf_counter() - started, 1)}
        print(f"== {name} done in {summary[name]['seconds']} s", flush=True)
    print(json.dumps({n: s["seconds"] for n, s in summary.items()}, indent=2))
    return 0
