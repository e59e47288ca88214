"""Soak test: a bounded locust run at a target rate, with the server's and the client's
memory sampled over time (issue 7, item 4).

    python -m offload_perf.soak --duration 600 --rate 200           # embedded server
    python -m offload_perf.soak --duration 3600 --rate 2000 --users 64 \
        --host triton.example.org:8001 --output perf/results/soak-gpu

Starts a `LocalServer` on --repository (or uses --host), runs locust headless with the
project's locustfile (`offload_perf.load.locust_command`: constant shape, `--rate` shared by
`--users` paced users) for --duration seconds, and every --interval seconds samples

- the server's RSS: the sum of VmRSS over the tritonserver's process group (the server and
  its Python-backend stub processes); with --host only if --server-pid names a local one;
- the client's RSS: the locust process (users, offload clients, gRPC channels);
- locust's running request rate, p50/p99 (its 10 s window) and request/failure counts, from
  `<prefix>_stats_history.csv`.

Writes `soak.json` (samples; machine; command; achieved rate; p50/p99 per model and overall;
error rate; RSS at start/end, the fitted growth slope after --warmup and a verdict) and
`soak.png` to --output; locust's CSVs, HTML report and log go to <output>/raw/ (ignored by
git). Memory verdict per side: "no growth" when the least-squares slope after the warm-up,
times the length of that window, is below max(5 MB, 2 % of the RSS at the end of the
warm-up); else "growth". Exit code: 0; 1 when the error rate exceeds --max-error-rate, no
request succeeded or the server died; 2 when the server cannot be reached or started, or
an argument is invalid (argparse's usage error); 130 on Ctrl-C (what was sampled is still written).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from offload_perf.load import embedded_server, locust_command, summary
from offload_perf.options import RESULTS, machine, positive_float, positive_int

DEFAULT_OUTPUT = RESULTS / "soak"
MB = 1024 * 1024
GROWTH_FLOOR_MB = 5.0
GROWTH_FRACTION = 0.02


# --- memory -------------------------------------------------------------------------------

def _rss_bytes(pid: int | str) -> int:
    """VmRSS of one process in bytes (0 if it is gone or has no memory, e.g. a zombie)."""
    try:
        with Path(f"/proc/{pid}/status").open() as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def process_group_rss(pgid: int) -> tuple[int, int]:
    """(summed VmRSS in bytes, number of processes) over the processes of group `pgid`."""
    total = count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with Path(f"/proc/{entry.name}/stat").open() as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # fields after the command: state, ppid, pgrp, ...
            total += _rss_bytes(entry.name)
            count += 1
    return total, count


def process_rss(pid: int) -> int:
    return _rss_bytes(pid)


def fitted_growth(times_s: list[float], values_mb: list[float], warmup_s: float) -> dict:
    """Least-squares slope of RSS after the warm-up, its growth over that window and the
    verdict against max(5 MB, 2 % of the RSS at the end of the warm-up)."""
    points = [(t, v) for t, v in zip(times_s, values_mb, strict=True) if t >= warmup_s and v > 0]
    out: dict = {"start_mb": round(values_mb[0], 1) if values_mb else None,
                 "end_mb": round(values_mb[-1], 1) if values_mb else None,
                 "max_mb": round(max(values_mb), 1) if values_mb else None,
                 "warmup_s": warmup_s, "points_fitted": len(points)}
    if len(points) < 3:
        return {**out, "slope_mb_per_hour": None, "growth_mb": None, "threshold_mb": None,
                "verdict": "not enough samples"}
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var_t = sum((t - mean_t) ** 2 for t, _ in points)
    slope = sum((t - mean_t) * (v - mean_v) for t, v in points) / var_t if var_t else 0.0
    window = points[-1][0] - points[0][0]
    growth = slope * window
    threshold = max(GROWTH_FLOOR_MB, GROWTH_FRACTION * points[0][1])
    return {**out, "after_warmup_mb": round(points[0][1], 1),
            "slope_mb_per_hour": round(slope * 3600, 2), "window_s": round(window, 1),
            "growth_mb": round(growth, 2), "threshold_mb": round(threshold, 2),
            "verdict": "no growth" if growth < threshold else "growth"}


# --- locust's history ---------------------------------------------------------------------

def _float(value: str | None) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def history(prefix: Path) -> list[dict]:
    """The aggregate rows of locust's <prefix>_stats_history.csv (one a second)."""
    path = Path(f"{prefix}_stats_history.csv")
    rows: list[dict] = []
    if not path.is_file():
        return rows
    with Path(path).open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("Name") != "Aggregated":
                continue
            rows.append({"timestamp": _float(row.get("Timestamp")),
                         "users": int(_float(row.get("User Count")) or 0),
                         "rps": _float(row.get("Requests/s")),
                         "failures_per_s": _float(row.get("Failures/s")),
                         "p50_ms": _float(row.get("50%")), "p99_ms": _float(row.get("99%")),
                         "requests": int(_float(row.get("Total Request Count")) or 0),
                         "failures": int(_float(row.get("Total Failure Count")) or 0)})
    return [r for r in rows if r["timestamp"] is not None]


def _attach(samples: list[dict], rows: list[dict], started: float) -> None:
    """Each memory sample gets locust's aggregate row nearest in time (within 3 s)."""
    for sample in samples:
        wall = started + sample["t_s"]
        best = min(rows, key=lambda r: abs(r["timestamp"] - wall), default=None)
        if best is not None and abs(best["timestamp"] - wall) <= 3:
            for key in ("rps", "p50_ms", "p99_ms", "requests", "failures", "users"):
                sample[key] = best[key]


# --- the figure ---------------------------------------------------------------------------

def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = record["samples"]
    minutes = [s["t_s"] / 60 for s in samples]
    figure, (memory, latency, rate) = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    for key, label in (("server_rss_mb", "server (tritonserver + stubs)"),
                       ("client_rss_mb", "client (locust process)")):
        values = [s.get(key) for s in samples]
        if any(v for v in values):
            memory.plot(minutes, values, label=label)
    memory.axvline(record["settings"]["warmup_s"] / 60, color="grey", ls=":", lw=1,
                   label="end of warm-up")
    memory.set_ylabel("RSS (MB)")
    memory.set_ylim(bottom=0)
    memory.legend(fontsize=8)
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
        latency.plot(minutes, [s.get(key) for s in samples], label=label)
    latency.set_ylabel("latency, 10 s window (ms)")
    latency.set_ylim(bottom=0)
    latency.legend(fontsize=8)
    rate.plot(minutes, [s.get("rps") for s in samples], label="achieved")
    rate.axhline(record["settings"]["rate"], color="grey", ls="--", lw=1, label="target")
    rate.set_ylabel("requests/s")
    rate.set_xlabel("minutes")
    rate.set_ylim(bottom=0)
    rate.legend(fontsize=8)
    server = record["memory"]["server"]["verdict"] if record["memory"]["server"] else "n/a"
    figure.suptitle(f"soak: {record['settings']['rate']:g} req/s target, "
                    f"{record['seconds']:.0f} s; server memory: {server}, client memory: "
                    f"{record['memory']['client']['verdict']}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


# --- the run ------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=positive_float, default=600.0,
                        help="seconds (default 600)")
    parser.add_argument("--rate", type=positive_float, default=200.0,
                        help="target requests/s over all users (default 200)")
    parser.add_argument("--users", type=positive_int, default=8,
                        help="locust users sharing the rate (default 8)")
    parser.add_argument("--host", default=os.environ.get("LOAD_HOST") or None,
                        help="HOST:PORT of a running server (default: start an embedded one)")
    parser.add_argument("--server-pid", type=int, default=None,
                        help="with --host on this machine: the tritonserver pid, to sample "
                             "the RSS of its process group")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--models", default="jet_tagger,jet_energy_regression,"
                                            "calo_shower_generator")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds left out of the memory fit (default min(60, duration/5))")
    parser.add_argument("--max-error-rate", type=float, default=0.001,
                        help="failed fraction above which the run fails (default 0.001)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--loglevel", default="WARNING")
    return parser


def _stop(process: subprocess.Popen) -> None:
    """Ask locust to stop (SIGTERM: it stops its users and writes its reports), then kill."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    warmup = args.warmup if args.warmup is not None else min(60.0, args.duration / 5)
    raw = args.output / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / ".gitignore").write_text("# locust's CSVs, HTML report and log: large, not kept\n*\n")
    prefix = raw / "soak"

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from offload.errors import OffloadError

    console = Console(stderr=True)
    samples: list[dict] = []
    interrupted = server_died = False
    code = 0
    with contextlib.ExitStack() as stack:
        server = None
        if args.host:
            import offload

            host, where, pgid = args.host, args.host, args.server_pid
            with offload.Client(host, timeout=5, retries=0) as probe:
                reachable = any(probe.health(timeout=5).values())
            if not reachable:
                console.print(f"[red]soak: error: no ready server at {host}[/red] (is it "
                              "running, and is HOST:PORT its gRPC port?)")
                return 2
            if pgid is not None:
                pgid = os.getpgid(pgid)
        else:
            console.print(f"starting the embedded server on {args.repository} ...")
            try:
                server = stack.enter_context(embedded_server(args.repository, args.models))
            except OffloadError as error:
                console.print(f"[red]soak: error: the embedded server did not start:[/red] "
                              f"{error}")
                return 2
            host, where = server.grpc_url, f"embedded tritonserver at {server.grpc_url}"
            pgid = os.getpgid(server.pid)  # its own session: the stubs are in that group
        settings = argparse.Namespace(
            users=args.users, spawn_rate=float(args.users), run_time=f"{int(args.duration)}s",
            models=args.models, shape="constant", batch=args.batch, loglevel=args.loglevel,
            repository=args.repository,
            locust_args=["--rate", f"{args.rate:g}", "--csv-full-history"])
        command = locust_command(host, settings, prefix)
        console.print("$ locust " + " ".join(command[3:]), highlight=False)
        log = stack.enter_context((raw / "locust.log").open("w"))
        started = time.time()
        locust = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        stack.callback(_stop, locust)
        progress = stack.enter_context(Progress(
            TextColumn("soak"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
            TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=console))
        bar = progress.add_task("soak", total=args.duration, status="starting")
        try:
            next_sample = time.monotonic() + args.interval  # locust has started by then
            while locust.poll() is None:
                now = time.monotonic()
                if now >= next_sample:
                    # after a stall (a starved machine), no burst of catch-up samples
                    next_sample = max(next_sample + args.interval, now + args.interval / 2)
                    t = time.time() - started
                    server_rss, processes = process_group_rss(pgid) if pgid else (0, 0)
                    sample = {"t_s": round(t, 1),
                              "server_rss_mb": round(server_rss / MB, 1) if pgid else None,
                              "server_processes": processes if pgid else None,
                              "client_rss_mb": round(process_rss(locust.pid) / MB, 1)}
                    samples.append(sample)
                    if server is not None and not server.running:
                        server_died = True
                        console.print("[red]soak: the embedded server exited during the "
                                      "run[/red]")
                        break
                    last = history(prefix)[-1:]  # flushed by locust every 5 s
                    live = (f"{last[0]['rps'] or 0:6.1f} req/s  p99 {last[0]['p99_ms']} ms  "
                            f"{last[0]['failures']} failed" if last else "")
                    server_text = f"{sample['server_rss_mb']} MB" if pgid else "n/a"
                    progress.update(bar, completed=min(t, args.duration), status=(
                        f"server {server_text}  client {sample['client_rss_mb']} MB  {live}"))
                time.sleep(0.2)
        except KeyboardInterrupt:
            interrupted = True
            console.print("[yellow]soak: interrupted; stopping locust and the server[/yellow]")
        _stop(locust)
        progress.update(bar, completed=args.duration)
        seconds = time.time() - started

    rows = summary(prefix)
    timeline = history(prefix)
    _attach(samples, timeline, started)
    overall = next((r for r in rows if r["name"] == "Aggregated"), None)
    requests = overall["requests"] if overall else 0
    failures = overall["failures"] if overall else 0
    error_rate = failures / requests if requests else None
    after = [r["rps"] for r in timeline if r["timestamp"] - started >= warmup and r["rps"]]
    times = [s["t_s"] for s in samples]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    largest_gap = round(max(gaps), 1) if gaps else None
    stalled = largest_gap is not None and largest_gap > 3 * args.interval
    memory = {"server": fitted_growth(times, [s["server_rss_mb"] for s in samples], warmup)
              if pgid and samples else None,
              "client": fitted_growth(times, [s["client_rss_mb"] for s in samples], warmup),
              "rule": f"no growth: fitted growth after the warm-up < max({GROWTH_FLOOR_MB:g} "
                      f"MB, {GROWTH_FRACTION:.0%} of the RSS after the warm-up)"}
    record = {
        "machine": machine(), "server": where,
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
        "command": "python -m offload_perf.soak " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "locust_command": "locust " + " ".join(command[3:]),
        "settings": {"duration_s": args.duration, "rate": args.rate, "users": args.users,
                     "models": args.models, "batch": args.batch, "interval_s": args.interval,
                     "warmup_s": warmup, "max_error_rate": args.max_error_rate},
        "seconds": round(seconds, 1), "interrupted": interrupted, "server_died": server_died,
        "locust_exit_code": locust.returncode,
        "requests": requests, "failures": failures, "error_rate": error_rate,
        "rate_achieved": round(requests / min(seconds, args.duration), 1) if requests else 0.0,
        "rate_after_warmup": round(sum(after) / len(after), 1) if after else None,
        "p50_ms": overall["median_ms"] if overall else None,
        "p99_ms": overall["p99_ms"] if overall else None,
        "per_model": [{k: r[k] for k in ("name", "requests", "failures",
                                         "requests_per_second", "median_ms", "p95_ms",
                                         "p99_ms", "max_ms")} for r in rows],
        "largest_sample_gap_s": largest_gap, "stalled": stalled,
        "memory": memory, "samples": samples}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "soak.json").write_text(json.dumps(record, indent=1))
    if samples:
        plot(record, args.output / "soak.png")

    console.print(f"{requests} requests, {failures} failed, {record['rate_achieved']} req/s "
                  f"(target {args.rate:g}), p50 {record['p50_ms']} ms, p99 {record['p99_ms']} ms")
    for side in ("server", "client"):
        fit = memory[side]
        if fit:
            console.print(f"{side} RSS {fit['start_mb']} -> {fit['end_mb']} MB, slope "
                          f"{fit['slope_mb_per_hour']} MB/h: {fit['verdict']}")
    if stalled:
        console.print(f"[yellow]soak: warning: no sample for {largest_gap} s (the machine "
                      "stalled?): the memory fit and the latencies are suspect[/yellow]")
    console.print(f"wrote {args.output / 'soak.json'}, {args.output / 'soak.png'}, "
                  f"{raw}/ (locust's reports)")
    if interrupted:
        return 130
    if server_died:
        code = 1
    elif not requests or requests == failures:
        console.print("[red]soak: error: no request succeeded[/red] (see "
                      f"{raw / 'soak_failures.csv'} and {raw / 'locust.log'})")
        code = 1
    elif error_rate is not None and error_rate > args.max_error_rate:
        console.print(f"[red]soak: error: error rate {error_rate:.4%} above "
                      f"{args.max_error_rate:.4%}[/red] (see {raw / 'soak_failures.csv'})")
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
