"""Writing a trained model into the Triton repository: config, batch-size choice, checks."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # Triton's, e.g. "TYPE_FP32"
    dims: Sequence[int]  # without the batch dimension

    def pbtxt(self) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        return f'{{ name: "{self.name}" data_type: {self.data_type} dims: [ {dims} ] }}'


def config_pbtxt(name: str, backend: str, max_batch_size: int, inputs: Sequence[Tensor],
                 outputs: Sequence[Tensor], *, max_queue_delay_us: int = 500,
                 max_queue_size: int = 256, queue_timeout_us: int = 10_000_000,
                 instance_count: int = 2,
                 parameters: dict[str, str] | None = None,
                 versions: Sequence[int] | None = None) -> str:
    """A complete config (loads with auto-complete off). No instance_group kind: KIND_AUTO
    puts the model on a GPU in the NGC image and on the CPU in the embedded server.

    `versions`: serve exactly these version folders (`version_policy: { specific { ... } }`);
    a request that names no version gets the highest of them. None: Triton's default policy,
    the highest version folder only.

    The queue policy protects the server under overload: at most `max_queue_size` requests
    wait, none longer than `queue_timeout_us` (a request may ask for less); the others are
    refused before they run, which the client retries with backoff, elsewhere if it can.

    `instance_count` is 2, not 1: with a queue policy, Triton 2.51's dynamic batcher cannot
    prefetch and waits for an idle instance; the only wake-up it gets comes just before the
    instance is idle again, and when it loses that race it sleeps 500 ms. With a single
    instance, a request that cannot join the running batch then waits ~500 ms (README,
    "CPU backends"); with two, the other instance's completion wakes it."""
    lines = [
        f'name: "{name}"',
        f'backend: "{backend}"',
        f"max_batch_size: {max_batch_size}",
        *([version_policy_pbtxt(versions)] if versions else []),
        "input [",
        ",\n".join(f"  {t.pbtxt()}" for t in inputs),
        "]",
        "output [",
        ",\n".join(f"  {t.pbtxt()}" for t in outputs),
        "]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us}",
        f"  default_queue_policy {{ max_queue_size: {max_queue_size} timeout_action: REJECT",
        f"    default_timeout_microseconds: {queue_timeout_us} allow_timeout_override: true }}",
        "}",
        f"instance_group [ {{ count: {instance_count} }} ]",
    ]
    for key, value in (parameters or {}).items():
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


def version_policy_pbtxt(versions: Sequence[int]) -> str:
    """`version_policy` serving exactly `versions` (explicit, so that a stray version folder
    is not served by accident)."""
    listed = ", ".join(str(v) for v in sorted(versions))
    return f"version_policy: {{ specific: {{ versions: [ {listed} ] }} }}"


def model_folder(repository: Path, name: str, version: int = 1) -> Path:
    """`<repository>/<name>/<version>/`, created empty of any previous artifact."""
    folder = repository / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass(frozen=True)
class BatchTiming:
    batch: int
    seconds_per_batch: float

    @property
    def per_item_us(self) -> float:
        return self.seconds_per_batch / self.batch * 1e6

    @property
    def throughput(self) -> float:
        return self.batch / self.seconds_per_batch


def time_batches(run: Callable[[int], object], batches: Sequence[int],
                 min_seconds: float = 0.3) -> list[BatchTiming]:
    """In-process time per batch at each size (best of repeated runs, after a warm-up)."""
    timings = []
    for batch in batches:
        run(batch)
        best, spent, repeats = float("inf"), 0.0, 0
        while spent < min_seconds or repeats < 3:
            start = time.perf_counter()
            run(batch)
            elapsed = time.perf_counter() - start
            best, spent, repeats = min(best, elapsed), spent + elapsed, repeats + 1
        timings.append(BatchTiming(batch, best))
    return timings


def choose_max_batch_size(timings: Sequence[BatchTiming], fraction: float = 0.9) -> int:
    """The smallest measured batch reaching `fraction` of the best throughput, doubled for
    headroom (the dynamic batcher merges requests up to it), within what was measured.
    Larger batches only add latency once throughput has levelled off."""
    best = max(t.throughput for t in timings)
    enough = min(t.batch for t in timings if t.throughput >= fraction * best)
    return min(2 * enough, max(t.batch for t in timings))


#: Batch sizes at which exports are timed.
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def configure_by_measurement(model_dir: Path, backend: str, inputs: Sequence[Tensor],
                             outputs: Sequence[Tensor], sample: dict[str, np.ndarray], *,
                             versions: Sequence[int] | None = None,
                             batches: Sequence[int] = BATCHES, min_seconds: float = 0.3):
    """Write config.pbtxt with `max_batch_size` chosen by timing the exported artifact
    in-process with the backend's own runner (rows of `sample`, repeated up to the largest
    of `batches`), then load it again as the server will, which refuses a config that
    disagrees with the artifact. With several `versions` (all served, see
    :func:`config_pbtxt`) the highest is timed: a request naming no version gets it.
    Returns (runner, timings, max_batch_size)."""
    from offload_server.backends import load_in_process

    name = model_dir.name
    config = model_dir / "config.pbtxt"
    config.write_text(config_pbtxt(name, backend, max(batches), inputs, outputs,
                                   versions=versions))
    runner = load_in_process(model_dir)
    pool = {k: np.resize(v, (max(batches), *v.shape[1:])) for k, v in sample.items()}
    timings = time_batches(lambda b: runner.run({k: v[:b] for k, v in pool.items()}), batches,
                           min_seconds)
    max_batch = choose_max_batch_size(timings)
    config.write_text(config_pbtxt(name, backend, max_batch, inputs, outputs,
                                   versions=versions))
    return load_in_process(model_dir), timings, max_batch


@dataclass(frozen=True)
class JetCost:
    """In-process cost of one model version at one batch size, on one thread."""

    batch: int
    wall_us_per_item: float  # best of the repeats
    cpu_us_per_item: float  # the thread's CPU time, median of the repeats

    def as_dict(self) -> dict:
        return {"batch": self.batch, "wall_us_per_item": self.wall_us_per_item,
                "cpu_us_per_item": self.cpu_us_per_item}


def one_thread_cost(model_dir: Path, version: str | int, sample: dict[str, np.ndarray],
                    batches: Sequence[int], min_seconds: float = 1.0) -> list[JetCost]:
    """What a grid job pays per item to run a repository model itself: the artifact loaded
    by the server's own runner with one intra-op and one inter-op thread (the parameter
    names of the native backends; a grid slot is one core), timed per batch size on rows
    of `sample`. The CPU time is this thread's (the runners compute on the calling thread
    with one intra-op thread), which a busy machine stretches less than the wall time."""
    from dataclasses import replace

    from offload_server.backends.triton_model import load_checked
    from offload_server.model_spec import spec_from_folder

    one = {"intra_op_thread_count": "1", "inter_op_thread_count": "1",
           "TF_NUM_INTRA_THREADS": "1", "TF_NUM_INTER_THREADS": "1",
           "INTRA_OP_THREAD_COUNT": "1", "INTER_OP_THREAD_COUNT": "1"}
    spec = spec_from_folder(model_dir)
    runner = load_checked(model_dir, str(version), replace(spec,
                                                           parameters={**spec.parameters,
                                                                       **one}))
    pool = {k: np.resize(v, (max(batches), *v.shape[1:])) for k, v in sample.items()}
    costs = []
    for batch in batches:
        chunk = {k: v[:batch] for k, v in pool.items()}
        runner.run(chunk)
        walls, cpus, spent = [], [], 0.0
        while spent < min_seconds or len(walls) < 5:
            wall, cpu = time.perf_counter(), time.thread_time()
            runner.run(chunk)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.thread_time() - cpu)
            spent += walls[-1]
        costs.append(JetCost(batch, min(walls) / batch * 1e6,
                             float(np.median(cpus)) / batch * 1e6))
    return costs


def timing_table(timings: Sequence[BatchTiming]) -> str:
    rows = [f"| {t.batch} | {t.seconds_per_batch * 1e3:.3f} | {t.per_item_us:.1f} | "
            f"{t.throughput:,.0f} |" for t in timings]
    return "\n".join(["| batch | ms / batch | µs / item | items / s |",
                      "| ---: | ---: | ---: | ---: |", *rows])


def write_json(path: Path, record: dict) -> None:
    def default(value: object) -> object:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        raise TypeError(f"not JSON serialisable: {type(value).__name__}")

    path.write_text(json.dumps(record, indent=2, default=default) + "\n")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float | np.floating):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
