"""The `offload` command line.

Each subcommand lives in the module that owns its feature and is imported only when that
subcommand is used, so `offload --help` and the thin client never import the server side.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from offload.errors import OffloadError

# name -> (module providing add_arguments(parser) and run(args) -> int, extra needed, help);
# "module:suffix" names add_arguments_suffix / run_suffix instead.
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "models": ("offload.cli_client:models", "", "list the models of a server"),
    "infer": ("offload.cli_client:infer", "", "run a model on the arrays of a .npz file"),
    "stats": ("offload.cli_client:stats", "", "a model's server-side statistics"),
    "perf": ("offload_perf.sweep", "",
             "concurrency x batch-size throughput/latency sweep against a server"),
    "apply": ("offload.apply", "hep",
              "run the jet models over PFNano ROOT files, into friend trees (--workers: Dask)"),
    "gridsim": ("offload_perf.gridsim", "",
                "grid-job simulator: K event-loop workers, inference in-process vs offloaded"),
    "plan": ("offload_perf.plan", "",
             "capacity planner: replicas, jobs and bandwidth per replica, KEDA threshold, "
             "from `offload perf` sweeps"),
    "serve": ("offload_server.serve_cli", "server",
              "start a real Triton server on this machine with a model repository"),
    "repo": ("offload_server.repo_check", "server",
             "check a model repository against its artifacts (`offload repo check`)"),
    "train": ("offload_training.cli", "train",
              "regenerate data, train and export the physics models (`make models`)"),
    "deploy": ("offload_deploy.cli", "k8s",
               "deploy on Kubernetes (`make deploy`); `offload deploy status`"),
    "undeploy": ("offload_deploy.cli:undeploy", "k8s",
                 "remove a Kubernetes deployment (`make undeploy`)"),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="offload", description="Inference as a service for particle-physics experiments.")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = next((a for a in argv if a in SUBCOMMANDS), None)
    for name, (module_name, extra, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name, _extra=extra)
        # Only the chosen subcommand's module is imported, to fill in its arguments.
        if name == wanted:
            try:
                module, suffix = _module(module_name)
            except ModuleNotFoundError as error:
                sub.set_defaults(_missing=str(error))
            else:
                getattr(module, f"add{suffix}_arguments" if suffix else "add_arguments")(sub)
    return parser


def _module(spec: str):
    """(module, "_suffix" or "") for "package.module[:suffix]"."""
    name, _, suffix = spec.partition(":")
    return importlib.import_module(name), f"_{suffix}" if suffix else ""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "_missing", None):
        print(f"offload {args.command}: {args._missing}; it needs the '{args._extra}' extra: "
              f"pip install 'offload[{args._extra}]'", file=sys.stderr)
        return 2
    module, suffix = _module(args._module)
    try:
        return int(getattr(module, f"run_{suffix[1:]}" if suffix else "run")(args) or 0)
    except OffloadError as error:
        print(f"offload {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
