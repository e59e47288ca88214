"""Writing a trained model into the Triton repository: config, batch-size choice, checks."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from offload_server import model_config


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # Triton's, e.g. "TYPE_FP32"
    dims: Sequence[int]  # without the batch dimension


def config_pbtxt(name: str, backend: str, max_batch_size: int, inputs: Sequence[Tensor],
                 outputs: Sequence[Tensor], *, max_queue_delay_us: int = 500,
                 max_queue_size: int | None = None, queue_timeout_us: int = 10_000_000,
                 instance_count: int = 2,
                 parameters: dict[str, str] | None = None,
                 versions: Sequence[int] | None = None) -> str:
    """A complete config (loads with auto-complete off). No instance_group kind: KIND_AUTO
    puts the model on a GPU in the NGC image and on the CPU in the embedded server.

    `versions`: serve exactly these version folders (`version_policy: { specific { ... } }`,
    explicit, so that a stray version folder is not served by accident); a request that
    names no version gets the highest of them. None: Triton's default policy, the highest
    version folder only.

    No queue policy by default: with one, Triton 2.51's dynamic batcher cannot prefetch and
    waits for an idle instance, and the only wake-up it gets comes just before the instance
    is idle again; when it loses that race it sleeps 500 ms (README, "CPU backends"). The
    embedded server bounds its queue in its front instead (`offload serve --max-in-flight`).
    `max_queue_size` adds a policy (at most that many waiting, none longer than
    `queue_timeout_us`), for servers without such a front; then keep two instances or more,
    so that another instance's completion wakes the batcher."""
    return model_config.text(model_config_message(
        name, backend, max_batch_size, inputs, outputs, max_queue_delay_us=max_queue_delay_us,
        max_queue_size=max_queue_size, queue_timeout_us=queue_timeout_us,
        instance_count=instance_count, parameters=parameters, versions=versions))


def model_config_message(name: str, backend: str, max_batch_size: int,
                         inputs: Sequence[Tensor], outputs: Sequence[Tensor], *,
                         max_queue_delay_us: int = 500, max_queue_size: int | None = None,
                         queue_timeout_us: int = 10_000_000, instance_count: int = 2,
                         parameters: dict[str, str] | None = None,
                         versions: Sequence[int] | None = None):
    """The `model_config_pb2.ModelConfig` that `config_pbtxt` writes."""
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig(name=name, backend=backend,
                                          max_batch_size=max_batch_size)
    if versions:
        config.version_policy.specific.versions.extend(sorted(versions))
    for t in inputs:
        config.input.add(**model_config.tensor(t.name, t.data_type, t.dims))
    for t in outputs:
        config.output.add(**model_config.tensor(t.name, t.data_type, t.dims))
    batching = config.dynamic_batching
    batching.max_queue_delay_microseconds = max_queue_delay_us
    if max_queue_size is not None:
        policy = batching.default_queue_policy
        policy.max_queue_size = max_queue_size
        policy.timeout_action = model_config_pb2.ModelQueuePolicy.REJECT
        policy.default_timeout_microseconds = queue_timeout_us
        policy.allow_timeout_override = True
    config.instance_group.add(count=instance_count)
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    return config


def model_folder(repository: Path, name: str, version: int = 1) -> Path:
    """`<repository>/<name>/<version>/`, created empty of any previous artifact."""
    folder = repository / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass(frozen=True, order=True)
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


#: A request served by the embedded server costs ~0.5 ms besides the model (16 B through
#: its front on 127.0.0.1, perf/RESULTS.md). A batch that computes for 4× that keeps the
#: per-request cost within ~20 % of the batch's time, however flat the model's throughput.
MIN_BATCH_MS = 2.0
#: choose_max_batch_size's rule, for the model cards.
MAX_BATCH_RULE = ("twice the smallest measured batch that reaches 90 % of the best throughput "
                  f"and computes for at least {MIN_BATCH_MS:g} ms (4× a served request's "
                  "~0.5 ms outside the model), within the batches measured")


def choose_max_batch_size(timings: Sequence[BatchTiming], fraction: float = 0.9,
                          min_batch_ms: float = MIN_BATCH_MS) -> int:
    """Twice the smallest measured batch that reaches `fraction` of the best throughput and
    takes at least `min_batch_ms` (the largest such batch if none does), within what was
    measured: the dynamic batcher merges requests up to it. Larger batches only add latency
    once throughput has levelled off; smaller ones pay the per-request cost too often."""
    best = max(t.throughput for t in timings)
    fast = sorted(t for t in timings if t.throughput >= fraction * best)
    long_enough = [t.batch for t in fast if t.seconds_per_batch * 1e3 >= min_batch_ms]
    enough = long_enough[0] if long_enough else fast[-1].batch
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
    by the server's own runner with one intra-op and one inter-op thread (a grid slot is one
    core), timed per batch size on rows of `sample`."""
    from offload_server.backends import load_in_process
    from offload_server.backends.cost import time_runner

    runner = load_in_process(model_dir, version, one_thread=True)
    pool = {k: np.resize(v, (max(batches), *v.shape[1:])) for k, v in sample.items()}
    costs = []
    for batch in batches:
        cost = time_runner(runner, {k: v[:batch] for k, v in pool.items()}, min_seconds)
        costs.append(JetCost(batch, cost.wall_us_per_row, cost.cpu_us_per_row))
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
