"""Served vs in-process throughput of each CPU backend, on the same small MLP.

For onnxruntime, pytorch (TorchScript) and tensorflow (SavedModel), the reference MLP of
`offload_server.reference_models` is exported into a temporary repository and served by
the embedded tritonserver; the same artifact is also loaded in this process by the same
runner code the backend uses (same framework, default threads, no Triton), so the ratio
is what serving costs or buys. Both are measured side by side, in one run:

    python perf/bench_backends.py                      # batch 1, 64, 1024
    python perf/bench_backends.py --batch 1 --window 0.5 --backend onnxruntime

Like perf_analyzer, each figure is measured in windows repeated until the last three
agree within --stability percent (or --max-windows is reached, which is reported). The
served side uses NVIDIA's tritonclient.grpc (the reference client). Results go to
perf/results/ as JSON and PNG; perf/RESULTS.md records them with the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from offload_perf.options import machine
from offload_server import LocalServer
from offload_server.backends import load_in_process
from offload_server.reference_models import MLPS, N_FEATURES

RESULTS = Path(__file__).parent / "results"


@dataclass
class Measurement:
    backend: str
    mode: str  # "in-process" or "served cN"
    batch: int
    throughput: float  # inferences (rows) per second
    latency_p50_ms: float
    windows: int
    stable: bool
    # Served only: Triton's own time per request (queue + compute), from its statistics API;
    # the rest of the round trip is the client, gRPC and the loopback.
    server_us_per_request: float | None = None


def server_time_ns(grpc_url: str, model: str) -> tuple[int, int]:
    """(requests, nanoseconds) Triton has spent on `model` so far."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    client.close()
    success = stats["inference_stats"]["success"]
    return int(success.get("count", 0)), int(success.get("ns", 0))


def measure(call: Callable[[], None], *, batch: int, concurrency: int, window: float,
            max_windows: int, stability: float) -> tuple[float, float, int, bool]:
    """Throughput (rows/s) and median latency over windows repeated until stable."""
    for _ in range(3):  # warm-up: first calls allocate and compile
        call()
    rates: list[float] = []
    latencies: list[float] = []
    for windows in range(1, max_windows + 1):
        count, elapsed, window_latencies = _window(call, concurrency, window)
        rates.append(count * batch / elapsed)
        latencies = window_latencies
        last = rates[-3:]
        if len(last) == 3 and (max(last) - min(last)) <= stability / 100 * statistics.mean(last):
            return statistics.mean(last), statistics.median(latencies) * 1e3, windows, True
    return statistics.mean(rates[-3:]), statistics.median(latencies) * 1e3, max_windows, False


def _window(call: Callable[[], None], concurrency: int, seconds: float):
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def loop() -> None:
        mine = []
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            call()
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=loop) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies), time.perf_counter() - started, latencies


def served_call(grpc_url: str, model: str, input_name: str, output_name: str,
                x: np.ndarray) -> Callable[[], None]:
    import tritonclient.grpc as grpcclient

    local = threading.local()  # one channel per thread, as one job per core would have

    def call() -> None:
        if not hasattr(local, "client"):
            local.client = grpcclient.InferenceServerClient(grpc_url)
            local.inputs = [grpcclient.InferInput(input_name, list(x.shape), "FP32")]
            local.inputs[0].set_data_from_numpy(x)
            local.outputs = [grpcclient.InferRequestedOutput(output_name)]
        local.client.infer(model, local.inputs, outputs=local.outputs).as_numpy(output_name)

    return call


def _flag(measurement: Measurement) -> str:
    return "" if measurement.stable else "*"


def plot(results: list[Measurement], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = sorted({r.backend for r in results})
    batches = sorted({r.batch for r in results})
    modes = sorted({r.mode for r in results}, key=lambda m: (m != "in-process", m))
    fig, axes = plt.subplots(1, len(backends), figsize=(5 * len(backends), 4), sharey=True)
    axes = np.atleast_1d(axes)
    width = 0.8 / len(modes)
    for ax, backend in zip(axes, backends, strict=True):
        for i, mode in enumerate(modes):
            values = [next((r.throughput for r in results if r.backend == backend
                            and r.mode == mode and r.batch == b), 0) for b in batches]
            ax.bar(np.arange(len(batches)) + i * width, values, width, label=mode)
        ax.set_xticks(np.arange(len(batches)) + width * (len(modes) - 1) / 2,
                      [str(b) for b in batches])
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_title(backend)
    axes[0].set_ylabel("inferences / s")
    axes[0].legend()
    fig.suptitle("reference MLP: served (tritonserver, CPU) vs in-process")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", action="append", choices=list(MLPS),
                        help="measure only this backend (repeatable; default: all)")
    parser.add_argument("--batch", action="append", type=int, help="default: 1, 64, 1024")
    parser.add_argument("--concurrency", action="append", type=int,
                        help="served client threads (default: 1 and 4)")
    parser.add_argument("--window", type=float, default=1.0, help="seconds per window")
    parser.add_argument("--max-windows", type=int, default=10)
    parser.add_argument("--stability", type=float, default=10.0, help="percent")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    backends = args.backend or list(MLPS)
    batches = args.batch or [1, 64, 1024]
    concurrencies = args.concurrency or [1, 4]
    # Wide enough for the table when the output goes to a file or a CI log.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    results: list[Measurement] = []
    with tempfile.TemporaryDirectory() as scratch:
        repo = Path(scratch)
        for backend in backends:
            MLPS[backend][1](repo)
        in_process = {b: load_in_process(repo / MLPS[b][0]) for b in backends}
        with LocalServer(repo, models=[MLPS[b][0] for b in backends]) as server, \
                Progress(console=console) as progress:
            task = progress.add_task("measuring",
                                     total=len(backends) * len(batches) * (1 + len(concurrencies)))
            for backend in backends:
                model, _, input_name, output_name = MLPS[backend]
                for batch in batches:
                    x = np.random.default_rng(batch).normal(
                        size=(batch, N_FEATURES)).astype(np.float32)
                    runner, feed = in_process[backend], {input_name: x}
                    calls = {"in-process": (lambda r=runner, f=feed: r.run(f), 1)}
                    for c in concurrencies:
                        calls[f"served c{c}"] = (served_call(server.grpc_url, model, input_name,
                                                             output_name, x), c)
                    for mode, (call, concurrency) in calls.items():
                        progress.update(task, description=f"{backend} batch {batch} {mode}")
                        served = mode != "in-process"
                        before = server_time_ns(server.grpc_url, model) if served else (0, 0)
                        rate, p50, windows, stable = measure(
                            call, batch=batch, concurrency=concurrency, window=args.window,
                            max_windows=args.max_windows, stability=args.stability)
                        server_us = None
                        if served:
                            after = server_time_ns(server.grpc_url, model)
                            server_us = (after[1] - before[1]) / max(after[0] - before[0], 1) / 1e3
                        results.append(Measurement(backend, mode, batch, rate, p50, windows,
                                                   stable, server_us))
                        progress.advance(task)
    table = Table(title="served vs in-process (inferences/s; ratio = served / in-process)")
    for column in ("backend", "batch", "in-process", *(f"served c{c}" for c in concurrencies),
                   *(f"ratio c{c}" for c in concurrencies), "p50 ms (in-proc / c1)",
                   "Triton µs/request (c1)"):
        table.add_column(column, justify="right")
    for backend in backends:
        for batch in batches:
            row = {r.mode: r for r in results if r.backend == backend and r.batch == batch}
            base = row["in-process"]
            served = [row[f"served c{c}"] for c in concurrencies]
            table.add_row(
                backend, str(batch), f"{base.throughput:,.0f}{_flag(base)}",
                *(f"{s.throughput:,.0f}{_flag(s)}" for s in served),
                *(f"{s.throughput / base.throughput:.2f}" for s in served),
                f"{base.latency_p50_ms:.3f} / {served[0].latency_p50_ms:.3f}",
                f"{served[0].server_us_per_request:.0f}")
    console.print(table)
    if not all(r.stable for r in results):
        console.print("* not stable within the given windows: treat with care")
    args.output.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine(), "settings": vars(args) | {"output": str(args.output)},
              "results": [asdict(r) for r in results]}
    (args.output / "bench_backends.json").write_text(json.dumps(record, indent=2))
    plot(results, args.output / "bench_backends.png")
    console.print(f"wrote {args.output / 'bench_backends.json'} and bench_backends.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
