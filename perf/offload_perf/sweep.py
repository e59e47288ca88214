"""`offload perf MODEL`: a concurrency × batch-size sweep against a running server.

    offload perf jet_tagger --server 127.0.0.1:8001 --concurrency 1 4 16 --batch 1 32

Like perf_analyzer: for each (batch, concurrency) pair, N client threads send requests back
to back; throughput and latency are measured in windows, repeated until the last three
windows agree within --stability percent (at most --max-trials windows). Triton's own
statistics give the server-side split (queue, compute input / infer / output) per request.
Writes perf_analyzer-style CSV, JSON and a PNG (throughput vs latency) into --output.
Inputs come from an .npz (--input-data) or are generated to the model's metadata.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import offload
from offload.endpoints import SERVERS_VARIABLE
from offload_perf.options import (
    keep_parser,
    machine,
    non_negative_float,
    positive_float,
    positive_int,
    usage_error,
)

#: perf_analyzer's column names where the meaning is the same (times in µs), then ours:
#: Batch, Client+Network (round trip minus the server's share), Stable, Windows.
CSV_COLUMNS = ("Concurrency", "Batch", "Inferences/Second", "Server Queue",
               "Server Compute Input", "Server Compute Infer", "Server Compute Output",
               "Client+Network", "p50 latency", "p90 latency", "p95 latency", "p99 latency",
               "Avg latency", "Stable", "Windows")


@dataclass
class Point:
    concurrency: int
    batch: int
    throughput: float  # inferences (rows) per second
    p50_us: float
    p90_us: float
    p95_us: float
    p99_us: float
    avg_us: float
    server_queue_us: float
    server_compute_input_us: float
    server_compute_infer_us: float
    server_compute_output_us: float
    client_us: float  # round trip minus the server's share: client, gRPC, network
    stable: bool
    windows: int
    # Model executions per request (Triton's statistics): below 1 when the dynamic batcher
    # merged requests. None in files written before it was recorded.
    server_executions_per_request: float | None = None


class UnstableError(offload.OffloadError):
    """A point did not reach stability within the allowed windows."""


def generated_inputs(model: offload.Model, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the model's shapes and types: variable dimensions become 1, the
    batch dimension `batch`."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for tensor in model.inputs:
        dims = list(tensor.shape)
        if model.max_batch_size > 0:
            dims[0] = batch
        shape = [1 if d < 0 else d for d in dims]
        kind = tensor.dtype.kind
        if tensor.datatype == "BYTES":
            value = np.full(shape, b"x", dtype=object)
        elif kind == "f":
            value = rng.normal(size=shape).astype(tensor.dtype)
        elif kind == "b":
            value = rng.integers(0, 2, size=shape).astype(bool)
        else:
            value = rng.integers(0, 10, size=shape).astype(tensor.dtype)
        inputs[tensor.name] = value
    return inputs


def missing_inputs(path: Path, model: offload.Model) -> str | None:
    """What an .npz lacks of the model's inputs, in words; None if it has them all."""
    with np.load(path, allow_pickle=False) as data:
        missing = [t.name for t in model.inputs if t.name not in data.files]
        if not missing:
            return None
        return (f"{path} lacks input(s) {', '.join(missing)} of model '{model.name}' "
                f"(it has: {', '.join(data.files)})")


def from_file(path: Path, model: offload.Model, batch: int) -> dict[str, np.ndarray]:
    """The first `batch` rows of each input in an .npz (repeated if it has fewer)."""
    problem = missing_inputs(path, model)
    if problem:
        raise offload.InvalidInputError(problem, model=model.name)
    with np.load(path, allow_pickle=False) as data:
        return {t.name: np.resize(data[t.name], (batch, *data[t.name].shape[1:]))
                if model.max_batch_size > 0 else data[t.name] for t in model.inputs}


def measure(model: offload.Model, inputs: dict[str, np.ndarray], batch: int,
            concurrency: int, *, window: float, stability: float, max_trials: int) -> Point:
    """One point: windows until the last three throughputs agree within `stability` %."""
    rates: list[float] = []
    last: tuple[list[float], tuple] | None = None
    model.infer(inputs)  # warm-up, and a clear error before any thread starts
    for trial in range(1, max_trials + 1):
        before = _server(model)
        latencies = _window(model, inputs, concurrency, window)
        after = _server(model)
        rates.append(len(latencies) * batch / window)
        last = (latencies, _per_request(before, after))
        recent = rates[-3:]
        # Strictly within: --stability 0 can never be met (a way to force the full trials).
        if len(recent) == 3 and max(recent) - min(recent) < stability / 100 * np.mean(recent):
            return _point(concurrency, batch, recent, last, True, trial)
    assert last is not None
    return _point(concurrency, batch, rates[-3:], last, False, max_trials)


def _window(model: offload.Model, inputs: dict[str, np.ndarray], concurrency: int,
            seconds: float) -> list[float]:
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def loop() -> None:
        mine = []
        try:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                model.infer(inputs)
                mine.append(time.perf_counter() - start)
        except BaseException as error:  # surfaced below, never swallowed
            errors.append(error)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=loop) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return latencies


def _server(model: offload.Model) -> tuple:
    from offload_perf.options import server_totals

    row = server_totals(model)
    if row is None:
        return (0, 0.0, 0.0, 0.0, 0.0, 0)
    n = row.requests
    return (n, row.queue_us * n, row.compute_input_us * n, row.compute_infer_us * n,
            row.compute_output_us * n, row.executions)


def _per_request(before: tuple, after: tuple) -> tuple:
    count = max(after[0] - before[0], 1)
    return tuple((a - b) / count for a, b in zip(after[1:], before[1:], strict=True))


def _point(concurrency: int, batch: int, rates: list[float], last: tuple, stable: bool,
           windows: int) -> Point:
    latencies, server = last
    times, executions = server[:4], server[4]
    us = np.array(latencies) * 1e6 if latencies else np.array([np.nan])
    p50, p90, p95, p99 = np.percentile(us, [50, 90, 95, 99])
    return Point(concurrency, batch, float(np.mean(rates)), p50, p90, p95, p99,
                 float(us.mean()), *times, float(us.mean() - sum(times)), stable, windows,
                 executions)


def write_csv(points: list[Point], path: Path) -> None:
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for p in points:
            writer.writerow([p.concurrency, p.batch, f"{p.throughput:.2f}",
                             f"{p.server_queue_us:.0f}", f"{p.server_compute_input_us:.0f}",
                             f"{p.server_compute_infer_us:.0f}",
                             f"{p.server_compute_output_us:.0f}", f"{p.client_us:.0f}",
                             f"{p.p50_us:.0f}", f"{p.p90_us:.0f}", f"{p.p95_us:.0f}",
                             f"{p.p99_us:.0f}", f"{p.avg_us:.0f}", int(p.stable), p.windows])


def plot(points: list[Point], model: str, path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for batch in sorted({p.batch for p in points}):
        row = [p for p in points if p.batch == batch]
        left.plot([p.p99_us / 1e3 for p in row], [p.throughput for p in row], marker="o",
                  label=f"batch {batch}")
        for p in row:
            left.annotate(f"c{p.concurrency}", (p.p99_us / 1e3, p.throughput), fontsize=7)
    left.set_xlabel("p99 latency (ms)")
    left.set_ylabel("inferences / s")
    left.set_title(f"{model}: throughput vs latency")
    left.legend()
    labels = [f"b{p.batch} c{p.concurrency}" for p in points]
    parts = (("queue", "server_queue_us"), ("compute input", "server_compute_input_us"),
             ("compute infer", "server_compute_infer_us"),
             ("compute output", "server_compute_output_us"), ("client + network", "client_us"))
    bottom = np.zeros(len(points))
    for label, key in parts:
        values = np.array([max(getattr(p, key), 0.0) / 1e3 for p in points])
        right.bar(labels, values, bottom=bottom, label=label)
        bottom += values
    right.set_ylabel("ms per request (average)")
    right.set_title("where the time goes")
    right.tick_params(axis="x", labelrotation=60, labelsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model")
    parser.add_argument("--server", action="append", dest="servers", metavar="HOST:PORT",
                        help=f"default ${SERVERS_VARIABLE}, else 127.0.0.1:8001")
    parser.add_argument("--concurrency", type=positive_int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batch", type=positive_int, nargs="+", default=[1])
    parser.add_argument("--window", type=positive_float, default=1.0,
                        help="seconds per window")
    parser.add_argument("--stability", type=non_negative_float, default=10.0,
                        help="percent")
    parser.add_argument("--max-trials", type=positive_int, default=10,
                        help="windows per point at most")
    parser.add_argument("--input-data", type=Path, help=".npz with one array per input")
    parser.add_argument("--output", type=Path, default=Path("perf/results/sweeps"))
    parser.add_argument("--timeout", type=positive_float, default=60.0)
    keep_parser(parser)  # --batch and --input-data are checked against the model, later


def run(args: argparse.Namespace) -> int:
    import os

    servers = args.servers or os.environ.get(SERVERS_VARIABLE) or "127.0.0.1:8001"
    points: list[Point] = []
    unstable = []
    args.output.mkdir(parents=True, exist_ok=True)
    stem = args.output / f"{args.model}"
    with offload.Client(servers, timeout=args.timeout, retries=1) as client:
        model = client.model(args.model)
        if model.max_batch_size == 0 and args.batch != [1]:
            print(f"model '{args.model}' does not batch: measuring batch 1 only",
                  file=sys.stderr)
            args.batch = [1]
        too_big = [b for b in args.batch if 0 < model.max_batch_size < b]
        if too_big:
            usage_error(args, f"argument --batch: batch size(s) {too_big} exceed model "
                              f"'{args.model}''s max_batch_size {model.max_batch_size}")
        if args.input_data:
            if not args.input_data.is_file():
                usage_error(args, f"argument --input-data: no file {args.input_data}")
            problem = missing_inputs(args.input_data, model)
            if problem:
                usage_error(args, f"argument --input-data: {problem}")
        total = len(args.batch) * len(args.concurrency)
        try:
            for batch in args.batch:
                inputs = (from_file(args.input_data, model, batch) if args.input_data
                          else generated_inputs(model, batch))
                for concurrency in args.concurrency:
                    print(f"[{len(points) + 1}/{total}] batch {batch}, concurrency "
                          f"{concurrency} ...", file=sys.stderr, flush=True)
                    point = measure(model, inputs, batch, concurrency, window=args.window,
                                    stability=args.stability, max_trials=args.max_trials)
                    points.append(point)
                    if not point.stable:
                        unstable.append((batch, concurrency))
                    print(f"  {point.throughput:,.1f} inf/s, p50 {point.p50_us / 1e3:.2f} ms,"
                          f" p99 {point.p99_us / 1e3:.2f} ms"
                          + ("" if point.stable else "  (NOT stable)"), file=sys.stderr)
        finally:  # whatever was measured is kept, also when a point fails
            if points:
                write_csv(points, stem.with_suffix(".csv"))
                record = {"model": args.model, "servers": servers, "settings": {
                    "window": args.window, "stability": args.stability,
                    "max_trials": args.max_trials},
                    "client_machine": platform.node(), "machine": machine(),
                    "date": time.strftime("%Y-%m-%d %H:%M"),
                    "points": [asdict(p) for p in points]}
                stem.with_suffix(".json").write_text(json.dumps(record, indent=2))
                drawn = plot(points, args.model, stem.with_suffix(".png"))
                print(f"wrote {stem}.csv, .json" + (", .png" if drawn else ""),
                      file=sys.stderr)
    if unstable:
        raise UnstableError(
            f"{len(unstable)} point(s) did not reach stability within {args.max_trials} "
            f"windows of {args.window} s ({args.stability} %): (batch, concurrency) = "
            f"{unstable}; their figures are kept but flagged. Use longer --window or more "
            "--max-trials")
    return 0
