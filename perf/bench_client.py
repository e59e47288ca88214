"""The client's own cost: offload vs a raw gRPC stub (the floor) vs NVIDIA's tritonclient.

All three talk to the same embedded tritonserver (on its own unix socket, not through
offload's front: perf/bench_front.py measures that) and the same identity model (Triton's
Python backend echoing an FP32 tensor), side by side in one run:

- per call, at 16 B, 1 MB and 16 MB. *floor*, as the issue defines it: the generated gRPC
  stub (GRPCInferenceServiceStub.ModelInfer) sending a ModelInferRequest built once in
  advance, which it serialises on each call, and parsing the response message. Two stricter
  references: *wire floor*, a bare channel sending bytes serialised in advance (no client
  can start from those), and *floor built*, the bare channel building its bytes from the
  array on each call with the one copy any client starting from numpy must make. offload
  builds the request from numpy, checks it and decodes the output to numpy; tritonclient
  does the same with its InferInput / InferResult;
- pipelined at batch 1 (16 B): offload's futures (`submit`) and its asyncio client with
  1–64 requests in flight, vs tritonclient's synchronous loop.

    python perf/bench_client.py              # results to perf/results/bench_client.{json,png}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
from rich.console import Console
from rich.table import Table
from tritonclient.grpc import model_config_pb2

import offload
from offload import protocol, wire
from offload_perf.options import machine
from offload_server import LocalServer, model_config

RESULTS = Path(__file__).parent / "results"
SIZES = {"16 B": 4, "1 MB": 262_144, "16 MB": 4_194_304}  # float32 elements
# glibc's malloc serves blocks above its mmap threshold (128 KiB at start, raised as such
# blocks are freed) with fresh pages: the stub floor took ~1.5 ms more at 1 MB here until
# these were pinned; which variant pays depends on the order of earlier allocations.
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),  # glibc allows at most 32 MiB
                "MALLOC_TRIM_THRESHOLD_": str(64 * 2**20)}

ECHO = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())])
            for r in requests]
'''


def identity_config() -> model_config_pb2.ModelConfig:
    """The echo model's config: one FP32 tensor of any length in, the same out."""
    return model_config_pb2.ModelConfig(
        name="identity", backend="python", max_batch_size=0,
        input=[model_config_pb2.ModelInput(**model_config.tensor("INPUT0", "TYPE_FP32", [-1]))],
        output=[model_config_pb2.ModelOutput(
            **model_config.tensor("OUTPUT0", "TYPE_FP32", [-1]))])


def identity_repository(root: Path) -> Path:
    (root / "identity" / "1").mkdir(parents=True)
    model_config.write(root / "identity" / "config.pbtxt", identity_config())
    (root / "identity" / "1" / "model.py").write_text(ECHO)
    return root


def per_call(call: Callable[[], object], seconds: float) -> tuple[float, float]:
    """(median seconds per call, calls per second) over a window, after a warm-up."""
    for _ in range(3):
        call()
    durations = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(durations) < 5:
        start = time.perf_counter()
        call()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations), len(durations) / sum(durations)


def interleaved(calls: dict[str, Callable[[], object]], seconds: float,
                rounds: int = 5) -> dict[str, float]:
    """Median seconds per call of each variant, measured in `rounds` short windows taken
    in turn: a noisy neighbour slows all of them alike, so their ratios stay fair."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            samples[name].append(per_call(call, seconds / rounds)[0])
    return {name: statistics.median(values) for name, values in samples.items()}


def floor_built_call(url: str, x: np.ndarray) -> Callable[[], object]:
    """The floor, but building its request from the array on each call with the one copy
    no client can avoid (head + tensor bytes into one message): the least any client
    starting from numpy must do."""
    channel = grpc.insecure_channel(url, options=[("grpc.max_send_message_length", -1),
                                                  ("grpc.max_receive_message_length", -1)])
    request = protocol.service_pb2.ModelInferRequest(model_name="identity")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[x.size])
    head = request.SerializeToString() + wire.raw_prefix(x.nbytes)
    infer = channel.unary_unary(protocol.SERVICE + "ModelInfer",
                                request_serializer=lambda b: b,
                                response_deserializer=protocol.service_pb2.ModelInferResponse
                                .FromString)
    return lambda: infer(b"".join((head, x)))


def _request_message(x: np.ndarray):
    request = protocol.service_pb2.ModelInferRequest(model_name="identity")
    tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[x.size])
    assert tensor is not None
    request.raw_input_contents.append(x.tobytes())
    return request


def floor_call(url: str, x: np.ndarray) -> Callable[[], object]:
    """The issue's floor: a raw gRPC stub sending a pre-built request."""
    from tritonclient.grpc import service_pb2_grpc

    channel = grpc.insecure_channel(url, options=[("grpc.max_send_message_length", -1),
                                                  ("grpc.max_receive_message_length", -1)])
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = _request_message(x)
    return lambda: stub.ModelInfer(request)


def wire_floor_call(url: str, x: np.ndarray) -> Callable[[], object]:
    """Below the floor: the request's bytes serialised before the timing."""
    channel = grpc.insecure_channel(url, options=[("grpc.max_send_message_length", -1),
                                                  ("grpc.max_receive_message_length", -1)])
    payload = _request_message(x).SerializeToString()
    infer = channel.unary_unary(protocol.SERVICE + "ModelInfer",
                                request_serializer=lambda b: b,
                                response_deserializer=protocol.service_pb2.ModelInferResponse
                                .FromString)
    return lambda: infer(payload)


def tritonclient_call(url: str, x: np.ndarray) -> Callable[[], object]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)

    def call() -> object:
        tensor = grpcclient.InferInput("INPUT0", [x.size], "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer("identity", [tensor]).as_numpy("OUTPUT0")
    return call


def pipelined_offload(model: offload.Model, x: np.ndarray, depth: int, seconds: float) -> float:
    """Inferences/s with `depth` requests in flight through futures."""
    import threading

    slots = threading.BoundedSemaphore(depth)
    done = [0]
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    futures = []
    while time.perf_counter() < end:
        slots.acquire()
        future = model.submit(INPUT0=x)
        future.add_done_callback(lambda _: (slots.release(), done.__setitem__(0, done[0] + 1)))
        futures.append(future)
    for future in futures:
        future.result()
    return len(futures) / (time.perf_counter() - start)


def pipelined_async(url: str, x: np.ndarray, depth: int, seconds: float) -> float:
    async def run() -> float:
        async with offload.AsyncClient(url) as client:
            model = await client.model("identity")
            count = 0
            end = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal count
                while time.perf_counter() < end:
                    await model.infer(INPUT0=x)
                    count += 1

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(depth)))
            return count / (time.perf_counter() - start)
    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="window per figure")
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--malloc", choices=("default", "fixed"), default="default",
                        help="fixed: glibc's mmap and trim thresholds pinned high (client "
                        "and server), so that no variant pays page faults for fresh "
                        "buffers of a size glibc has not yet adapted to; see RESULTS.md")
    args = parser.parse_args(argv)
    if args.malloc == "fixed" and os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        # glibc reads these once, at start: run this benchmark again with them set.
        os.environ |= FIXED_MALLOC
        os.execv(sys.executable, [sys.executable, __file__, *(argv or sys.argv[1:])])
    console = Console() if sys.stdout.isatty() else Console(width=220)
    record: dict = {"machine": machine(), "malloc": args.malloc, "per_call": [],
                    "pipelined": []}
    with tempfile.TemporaryDirectory() as scratch, \
            LocalServer(identity_repository(Path(scratch))) as server:
        # Every client talks to Triton's own socket: this measures the clients, not the
        # server's front (perf/bench_front.py measures that).
        url = server.triton_grpc_url
        with offload.Client(url) as client, \
                offload.Client(url, shared_memory=True) as shm_client:
            model = client.model("identity")
            shm_model = shm_client.model("identity")
            for label in args.sizes:
                x = np.random.default_rng(0).random(SIZES[label], dtype=np.float32)
                console.print(f"per call {label}: 5 interleaved rounds")
                medians = interleaved({
                    "wire floor": wire_floor_call(url, x),
                    "floor": floor_call(url, x),
                    "floor built": floor_built_call(url, x),
                    "offload": lambda x=x: model.infer(INPUT0=x),
                    "offload shm": lambda x=x: shm_model.infer(INPUT0=x),
                    "tritonclient": tritonclient_call(url, x)}, args.seconds * 4)
                record["per_call"].append({"size": label}
                                          | {k: v * 1e3 for k, v in medians.items()})
            x = np.ones(4, np.float32)
            sync = per_call(tritonclient_call(url, x), args.seconds)[1]
            for depth in args.depths:
                console.print(f"pipelined depth {depth}")
                record["pipelined"].append({
                    "depth": depth, "tritonclient_sync_loop": sync,
                    "offload_futures": pipelined_offload(model, x, depth, args.seconds),
                    "offload_asyncio": pipelined_async(url, x, depth, args.seconds)})

    table = Table(title=f"per call (median ms; ratio to the floor; malloc {args.malloc})")
    for column in ("size", "wire floor", "floor", "floor built", "offload", "offload shm",
                   "tritonclient", "offload / floor", "offload / wire floor",
                   "offload / floor built", "tritonclient / floor",
                   "offload / tritonclient", "shm / offload"):
        table.add_column(column, justify="right")
    for row in record["per_call"]:
        table.add_row(row["size"], f"{row['wire floor']:.3f}", f"{row['floor']:.3f}",
                      f"{row['floor built']:.3f}", f"{row['offload']:.3f}",
                      f"{row['offload shm']:.3f}", f"{row['tritonclient']:.3f}",
                      f"{row['offload'] / row['floor']:.2f}",
                      f"{row['offload'] / row['wire floor']:.2f}",
                      f"{row['offload'] / row['floor built']:.2f}",
                      f"{row['tritonclient'] / row['floor']:.2f}",
                      f"{row['offload'] / row['tritonclient']:.2f}",
                      f"{row['offload shm'] / row['offload']:.2f}")
    console.print(table)
    table = Table(title="pipelined, batch 1, 16 B (inferences/s)")
    for column in ("in flight", "tritonclient sync loop", "offload futures", "offload asyncio",
                   "futures / sync loop"):
        table.add_column(column, justify="right")
    for row in record["pipelined"]:
        table.add_row(str(row["depth"]), f"{row['tritonclient_sync_loop']:,.0f}",
                      f"{row['offload_futures']:,.0f}", f"{row['offload_asyncio']:,.0f}",
                      f"{row['offload_futures'] / row['tritonclient_sync_loop']:.2f}")
    console.print(table)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "bench_client.json").write_text(json.dumps(record, indent=2))
    plot(record, args.output / "bench_client.png")
    console.print(f"wrote {args.output / 'bench_client.json'} and bench_client.png")
    return 0


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    sizes = [r["size"] for r in record["per_call"]]
    names = ("wire floor", "floor", "floor built", "offload", "offload shm", "tritonclient")
    for i, name in enumerate(names):
        left.bar(np.arange(len(sizes)) + (i - 2.5) * 0.14,
                 [r[name] for r in record["per_call"]], 0.14, label=name)
    left.set_xticks(np.arange(len(sizes)), sizes)
    left.set_yscale("log")
    left.set_ylabel("median ms per call")
    left.set_title("per call, identity model")
    left.legend()
    depths = [r["depth"] for r in record["pipelined"]]
    for key, label in (("offload_futures", "offload submit()"),
                       ("offload_asyncio", "offload AsyncClient"),
                       ("tritonclient_sync_loop", "tritonclient sync loop")):
        right.plot(depths, [r[key] for r in record["pipelined"]], marker="o", label=label)
    right.set_xscale("log", base=2)
    right.set_xlabel("requests in flight")
    right.set_ylabel("inferences / s (batch 1)")
    right.set_title("pipelining")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
