"""`offload gridsim` / `python -m offload_perf.gridsim`: the arguments, and a run: the
server (embedded or given), the workers, the sweep, gridsim.json/.png and the summary."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import time
from pathlib import Path

import offload
from offload.endpoints import SERVERS_VARIABLE
from offload_perf.gridsim.choices import (
    DEFAULT_MODELS,
    DEFAULT_MODES,
    MODELS,
    MODES,
    OFFLOADED,
    split_versions,
)
from offload_perf.gridsim.errors import GridSimError
from offload_perf.options import (
    choice_list,
    int_list,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)

_MODELS_EXPLAINED = ("the grid-job simulator's events feed the jet models, whose inputs "
                     "offload.physics.jets computes, and the shower generator")


def model_list(text: str) -> list[str]:
    """A type: comma-separated `NAME` or `NAME:VERSION` entries, the names out of MODELS."""
    entries = [e.strip() for e in text.split(",") if e.strip()]
    names = choice_list(MODELS, "model", _MODELS_EXPLAINED)(
        ",".join(e.partition(":")[0] for e in entries) or text)
    versions = [e.partition(":")[2] for e in entries]
    bad = [e for e, v in zip(entries, versions, strict=True)
           if ":" in e and not v.strip().isdigit()]
    if bad:
        raise argparse.ArgumentTypeError(
            f"bad model version(s) {bad}: NAME:VERSION takes a number, as in jet_tagger:1")
    return [f"{n}:{v.strip()}" if v.strip() else n
            for n, v in zip(names, versions, strict=True)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int_list, default="1,2,4",
                        help="comma-separated worker counts K to sweep (default 1,2,4)")
    parser.add_argument("--modes", type=choice_list(MODES, "mode"),
                        default=",".join(DEFAULT_MODES),
                        help="comma-separated: in_process, offloaded (a request per model "
                             "per --block events), offloaded_batched (acquire/produce: every "
                             "event submitted to an offload.Batcher, collected --lag events "
                             "later); default in_process,offloaded")
    parser.add_argument("--server", metavar="HOST:PORT",
                        help="offload to this server instead of starting an embedded one "
                             f"(also ${SERVERS_VARIABLE})")
    parser.add_argument("--server-pgid", type=int, default=None, metavar="PGID",
                        help="with --server on this machine: its process group (e.g. the pid "
                             "of `offload serve`'s tritonserver), to report its CPU per event")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"),
                        help="the models (in-process, embedded server) and the event sample")
    parser.add_argument("--models", type=model_list, default=",".join(DEFAULT_MODELS),
                        help=f"the per-event models, a subset of {', '.join(MODELS)} "
                             "(calo_shower_generator: a fast-simulation job); NAME:VERSION "
                             "pins a version (e.g. jet_tagger:1), else the highest served")
    parser.add_argument("--cpu-ms", type=non_negative_float, default=2.0,
                        help="CPU time of busy work per event, besides preprocessing (ms)")
    parser.add_argument("--jets-per-event", type=positive_int, default=2)
    parser.add_argument("--showers-per-event", type=positive_int, default=4,
                        help="particles simulated per event by calo_shower_generator")
    parser.add_argument("--block", type=positive_int, default=1,
                        help="events per inference call")
    parser.add_argument("--lag", type=non_negative_int, default=256,
                        help="offloaded_batched: events between submitting an event and "
                             "collecting its results (default 256)")
    parser.add_argument("--duration", type=positive_float, default=10.0,
                        help="seconds each (K, mode) point is measured")
    parser.add_argument("--warmup", type=non_negative_float, default=2.0,
                        help="seconds per worker and mode")
    parser.add_argument("--timeout", type=positive_float, default=30.0,
                        help="seconds for a call to the server (and to reach it)")
    parser.add_argument("--output", type=Path, default=None,
                        help="folder for gridsim.json/.png (default perf/results)")


def run(args: argparse.Namespace) -> int:
    from offload_perf.gridsim.measure import sweep
    from offload_perf.gridsim.report import plot, summary
    from offload_perf.gridsim.results import ratios, saturation
    from offload_perf.gridsim.workers import Workers
    from offload_perf.options import RESULTS, machine
    from offload_server.model_spec import default_version

    versions = split_versions(args.models)
    ks, modes, models = args.workers, args.modes, list(versions)
    output = args.output or RESULTS
    repository = args.repository.resolve()
    for name in models:
        if not (repository / name / "config.pbtxt").is_file():
            raise offload.ModelNotFoundError(
                f"model '{name}' is not in the repository {repository} (no "
                f"{name}/config.pbtxt)", model=name)
        if versions[name] is not None and not (repository / name / versions[name]).is_dir():
            raise offload.ModelNotFoundError(
                f"model '{name}' has no version {versions[name]} in {repository}", model=name)
    resolved = {name: versions[name] or default_version(repository / name) for name in models}
    address = args.server or os.environ.get(SERVERS_VARIABLE)
    record = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "settings": {
        "workers": ks, "modes": modes, "models": models, "cpu_ms": args.cpu_ms,
        "jets_per_event": args.jets_per_event, "showers_per_event": args.showers_per_event,
        "block": args.block, "lag": args.lag, "duration_s": args.duration,
        "warmup_s": args.warmup,
        "versions": {name: {"requested": versions[name], "in_process": resolved[name]}
                     for name in models},
        "repository": str(args.repository),
        "in_process_threads": "1 intra-op, 1 inter-op per model and worker"},
        "server": None, "rows": [], "complete": False, "error": None}
    rows: list[dict] = record["rows"]
    with contextlib.ExitStack() as stack:
        offloading = any(m in OFFLOADED for m in modes)
        server_pgid = args.server_pgid
        if offloading and not address:
            from offload_server import LocalServer

            print(f"starting the embedded server on {repository} ...", file=sys.stderr,
                  flush=True)
            server = stack.enter_context(LocalServer(repository, models=models))
            address = server.grpc_url
            server_pgid = server.pid  # tritonserver leads its own process group
            record["server"] = f"embedded tritonserver at {address} (same machine)"
        elif offloading:
            record["server"] = address
        served: dict[str, offload.Model] = {}
        if offloading:
            client = stack.enter_context(offload.Client(address, timeout=args.timeout,
                                                        retries=1))
            try:
                served = {name: client.model(name, version=versions[name]) for name in models}
            except offload.ModelNotFoundError:
                raise
            except offload.OffloadError as error:
                raise GridSimError(f"cannot reach the server at {address}: {error}") from error
        settings = {"repository": str(repository), "server": address, "models": models,
                    "versions": versions,
                    "cpu_ms": args.cpu_ms, "jets_per_event": args.jets_per_event,
                    "showers_per_event": args.showers_per_event, "block": args.block,
                    "lag": args.lag,
                    "warmup": args.warmup, "timeout": args.timeout}
        workers = Workers(max(ks), settings)
        stack.callback(workers.close)
        try:
            sweep(workers, ks, modes, served, args, rows, server_pgid)
            record["complete"] = True
        except (offload.OffloadError, KeyboardInterrupt) as error:
            record["error"] = str(error) or type(error).__name__
            raise
        finally:
            record["saturation"] = saturation(rows)
            record["ratios"] = ratios(rows)
            if rows:
                output.mkdir(parents=True, exist_ok=True)
                (output / "gridsim.json").write_text(json.dumps(record, indent=2))
                drawn = plot(record, output / "gridsim.png")
                print(f"wrote {output / 'gridsim.json'}" + (", gridsim.png" if drawn else "")
                      + ("" if record["complete"] else " (partial: the run stopped early)"),
                      file=sys.stderr)
    summary(record)
    return 0


def main(argv: list[str] | None = None) -> int:
    description = (importlib.import_module("offload_perf.gridsim").__doc__ or "")
    parser = argparse.ArgumentParser(prog="python -m offload_perf.gridsim",
                                     description=description.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except offload.OffloadError as error:
        print(f"gridsim: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
