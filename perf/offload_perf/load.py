"""`make load`: locust, headless, against the embedded server (or a given one), with CSV and
HTML reports and a small summary.

    python -m offload_perf.load                                 # embedded server, 60 s
    python -m offload_perf.load --host gpu1.example.org:8001 --users 64 --shape spike
    make load LOAD_HOST=gpu1.example.org:8001 LOAD_ARGS="--run-time 5m"

Starts a `LocalServer` on --repository unless --host (or $LOAD_HOST) names a running
server, runs `locust -f <locustfile> --headless ... --csv --html` in a subprocess,
stops the server, and writes load_summary.json (per model: requests, failures,
inferences/s, latency percentiles; the machine; the locust command) next to the reports.
The exit code is locust's (1 if any request failed, via --exit-code-on-error).

The locustfile is the project's one, k8s/locust/locustfile.py, package data of
`offload_deploy` (found where that package is installed; `--locustfile` prints its path).
Paths are relative to the current directory: --repository model_repository, --output
perf/results/load (a checkout's root, where `make load` runs).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from offload_perf.options import RESULTS

DEFAULT_OUTPUT = RESULTS / "load"


def locustfile() -> Path:
    """The locustfile, where the offload_deploy package is (k8s/locust/ in a checkout),
    found without importing that package (it needs the k8s extra's pyyaml)."""
    spec = importlib.util.find_spec("offload_deploy")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "locust" / "locustfile.py"
        if path.is_file():
            return path
    raise FileNotFoundError("the locustfile (offload_deploy/locust/locustfile.py) is not "
                            "installed; reinstall offload")


def embedded_server(repository: Path, models: str):
    """A (not yet started) `LocalServer` on `repository` loading those of the comma-separated
    `models` that it holds (all of its models if none)."""
    from offload_server import LocalServer

    names = [m.strip() for m in models.split(",") if m.strip()]
    known = [m for m in names if (repository / m / "config.pbtxt").is_file()]
    return LocalServer(repository, models=known or None)


def locust_command(host: str, args: argparse.Namespace, prefix: Path) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(locustfile()), "--headless",
            "--host", host, "--users", str(args.users), "--spawn-rate", str(args.spawn_rate),
            "--run-time", args.run_time, "--models", args.models, "--shape", args.shape,
            "--batch", str(args.batch), "--repository", str(args.repository),
            "--csv", str(prefix), "--html", f"{prefix}.html",
            "--exit-code-on-error", "1", "--only-summary", "--stop-timeout", "10",
            "--loglevel", args.loglevel, *args.locust_args]


def summary(prefix: Path) -> list[dict]:
    """The per-model rows of locust's <prefix>_stats.csv (and the aggregate)."""
    path = Path(f"{prefix}_stats.csv")
    if not path.is_file():
        return []
    rows = []
    with Path(path).open(newline="") as handle:
        for row in csv.DictReader(handle):
            def number(key: str, row=row) -> float | None:
                value = row.get(key, "")
                try:
                    return float(value)
                except (TypeError, ValueError):
                    return None

            rows.append({"name": row["Name"], "type": row["Type"],
                         "requests": int(row["Request Count"]),
                         "failures": int(row["Failure Count"]),
                         "requests_per_second": number("Requests/s"),
                         "median_ms": number("Median Response Time"),
                         "average_ms": number("Average Response Time"),
                         "p95_ms": number("95%"), "p99_ms": number("99%"),
                         "max_ms": number("Max Response Time"),
                         "average_bytes": number("Average Content Size")})
    return rows


def by_user_count(prefix: Path) -> list[dict]:
    """Aggregate requests/s and percentiles per user count, from locust's 1 s history (the
    steps of the step shape, the base and the spike of the spike shape)."""
    path = Path(f"{prefix}_stats_history.csv")
    if not path.is_file():
        return []
    groups: dict[int, list[dict]] = {}
    with Path(path).open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["Name"] == "Aggregated" and row["Requests/s"] not in ("", "0", "0.000000"):
                groups.setdefault(int(row["User Count"]), []).append(row)
    out = []
    for users, rows in sorted(groups.items()):
        rows = rows[1:] or rows  # the first second after a change is a ramp: skip it
        def mean(key: str, rows=rows) -> float:
            values = [float(r[key]) for r in rows if r[key] not in ("", "N/A")]
            return round(sum(values) / len(values), 1) if values else float("nan")

        out.append({"users": users, "seconds": len(rows), "requests_per_second":
                    mean("Requests/s"), "p50_ms": mean("50%"), "p95_ms": mean("95%"),
                    "p99_ms": mean("99%")})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("LOAD_HOST") or None,
                        help="HOST:PORT of a running server (default: start an embedded one)")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"),
                        help="served by the embedded server; its validation samples are the "
                             "inputs (default model_repository, in the current directory)")
    parser.add_argument("--models", default="jet_tagger,jet_energy_regression,"
                                            "calo_shower_generator")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--spawn-rate", type=float, default=4.0)
    parser.add_argument("--run-time", default="60s", help="locust's format: 30s, 5m, ...")
    parser.add_argument("--shape", default="step", choices=("constant", "step", "spike"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"folder of the reports (default {DEFAULT_OUTPUT})")
    parser.add_argument("--summary", type=Path, default=None,
                        help="summary JSON (default <output>/../load_summary.json)")
    parser.add_argument("--loglevel", default="WARNING")
    parser.add_argument("--locustfile", action="store_true",
                        help="print the locustfile's path and exit (for locust -f ...)")
    parser.add_argument("locust_args", nargs="*", help="passed on to locust (after --)")
    args = parser.parse_args(argv)
    if args.locustfile:
        print(locustfile())
        return 0

    from offload_perf.options import machine

    args.output.mkdir(parents=True, exist_ok=True)
    prefix = args.output / "load"
    with contextlib.ExitStack() as stack:
        if args.host:
            host, where = args.host, args.host
        else:
            from offload.errors import OffloadError

            print(f"starting the embedded server on {args.repository} ...", file=sys.stderr,
                  flush=True)
            try:
                server = stack.enter_context(embedded_server(args.repository, args.models))
            except OffloadError as error:
                print(f"load: error: the embedded server did not start: {error}",
                      file=sys.stderr)
                return 1
            host, where = server.grpc_url, f"embedded tritonserver at {server.grpc_url}"
        command = locust_command(host, args, prefix)
        print("$ " + " ".join(command[2:]), file=sys.stderr, flush=True)
        started = time.time()
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        code = subprocess.run(command, env=environment).returncode
    rows = summary(prefix)
    record = {"machine": machine(), "server": where, "date": time.strftime(
        "%Y-%m-%d", time.localtime(started)), "seconds": round(time.time() - started, 1),
        "settings": {"users": args.users, "spawn_rate": args.spawn_rate,
                     "run_time": args.run_time, "shape": args.shape, "batch": args.batch,
                     "models": args.models},
        "command": "locust " + " ".join(command[3:]), "exit_code": code, "stats": rows,
        "by_user_count": by_user_count(prefix)}
    target = args.summary or args.output.parent / "load_summary.json"
    target.write_text(json.dumps(record, indent=2))
    for row in rows:
        print(f"{row['name']:24s} {row['requests']:7d} requests, {row['failures']} failed, "
              f"{row['requests_per_second'] or 0:8.1f}/s, median {row['median_ms']} ms, "
              f"p99 {row['p99_ms']} ms")
    print(f"wrote {prefix}_stats.csv, {prefix}.html, {target} (locust exit code {code})",
          file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
