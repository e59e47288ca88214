"""Worst-case latency of overlapping requests: a few requests sent at the same moment to an
idle server, again and again, per model and per instance configuration.

    python -m offload_perf.overlap                          # every model, 30 trials each
    python -m offload_perf.overlap --model calo_shower_generator --trials 100

Each trial sends, at once, the requests of a pattern and waits for every answer:

  * ``pair``: one request of max_batch_size rows and one of about a sixth of it (256 + 44
    for a model of max_batch_size 256: a job's events that do not fill a batch), which
    the dynamic batcher cannot merge (together they exceed max_batch_size);
  * ``triple``: two of max_batch_size and the remainder, what the client sends when it
    splits a larger batch (pieces in flight together);
  * ``burst``: six of max_batch_size and the remainder, a larger split: more requests in
    flight than instances, so requests queue behind running batches.

Measured per trial: each request's round trip (offload client, `submit()` futures), and
Triton's own queue time, compute time and execution count over the trial (deltas of its
statistics). A trial *stalls* when its slowest request took more than `STALL_MS` beyond
the compute the server did for the trial (compute summed over its requests, divided by
the instances that share it): time in which the server sat idle with work queued. That is
the signature of the lost wake-up in Triton 2.51's dynamic batcher, which then sleeps its
default 500 ms (README, "CPU backends"); slow compute on a loaded machine is not counted
as a stall. Every model is measured as committed (two instances, no queue policy), as it
was before the fix (one instance with a queue policy of 256 waiting, 10 s), and with one
instance and no policy, all on one embedded server, served from a temporary copy of the
repository.

Writes overlap.json (with the machine) into --output.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import offload
from offload_perf.options import RESULTS, machine, models_of, positive_int

#: Idle time (slowest round trip minus the trial's compute per instance) above this met the
#: batcher's 500 ms sleep: nothing else keeps an idle server from work this long.
STALL_MS = 400.0


def remainder(max_batch_size: int) -> int:
    """About a sixth of a full batch: 44 for 256, 5 for 32."""
    return max(1, round(max_batch_size * 11 / 64))


PATTERNS = {
    "pair": lambda m: [m, remainder(m)],
    "triple": lambda m: [m, m, remainder(m)],
    "burst": lambda m: [m] * 6 + [remainder(m)],
}


@dataclass
class Trial:
    latencies_ms: list[float]
    queue_ms: float  # Triton's queue time summed over the trial's requests
    compute_ms: float  # Triton's compute (input + infer + output), summed likewise
    executions: int

    def idle_ms(self, instances: int) -> float:
        """The slowest round trip beyond the compute each instance had to do."""
        return max(self.latencies_ms) - self.compute_ms / instances


@dataclass
class Row:
    model: str
    configuration: str  # "as committed" or "one instance"
    instances: int
    pattern: str
    sizes: list[int]
    trials: int
    worst_ms: float  # the slowest request of all trials
    median_trial_ms: float  # median over trials of the slowest request of the trial
    p90_trial_ms: float
    worst_queue_ms: float  # the largest queue time of a trial (summed over its requests)
    worst_idle_ms: float  # the largest idle time of a trial (see Trial.idle_ms)
    stalls: int  # trials whose idle time exceeded STALL_MS
    mean_executions: float


#: The configurations compared: (label, suffix of the served copy, instances forced or
#: None, queue policy: None as committed, else (max_queue_size, timeout µs) or () for none).
CONFIGURATIONS = (
    ("as committed", "", None, None),
    ("before: 1 instance + queue policy", "__before", 1, (256, 10_000_000)),
    ("1 instance, no policy", "__one_instance", 1, ()),
)


def variant_copy(source: Path, target: Path, instances: int | None,
                 queue_policy: tuple[int, int] | tuple[()] | None) -> None:
    """The model's folder (config, artifact) under another name, its instance count and
    queue policy replaced as asked (kind unchanged)."""
    from offload_server import model_config
    from offload_server.model_spec import read_config

    config = read_config(source)
    if instances is not None:
        kind = config.instance_group[0].kind if config.instance_group else None
        del config.instance_group[:]
        group = config.instance_group.add()
        group.count = instances
        if kind is not None:
            group.kind = kind
    if queue_policy is not None:
        config.dynamic_batching.ClearField("default_queue_policy")
        if queue_policy:
            policy = config.dynamic_batching.default_queue_policy
            policy.max_queue_size, policy.default_timeout_microseconds = queue_policy
            policy.timeout_action = policy.REJECT
            policy.allow_timeout_override = True
    config.name = target.name
    _copy_model(source, target)
    model_config.write(target / "config.pbtxt", config)


def _copy_model(source: Path, target: Path) -> None:
    """Config and version folders only (no plots, samples or cards)."""
    target.mkdir(parents=True)
    shutil.copy2(source / "config.pbtxt", target / "config.pbtxt")
    for version in source.iterdir():
        if version.is_dir() and version.name.isdigit():
            shutil.copytree(version, target / version.name)


def _counters(model: offload.Model) -> tuple[float, float, int, int]:
    """Cumulative (queue µs, compute µs, executions, requests) of the model on the server."""
    from offload_perf.options import server_totals

    row = server_totals(model)
    if row is None:
        return 0.0, 0.0, 0, 0
    compute = row.compute_input_us + row.compute_infer_us + row.compute_output_us
    return row.queue_us * row.requests, compute * row.requests, row.executions, row.requests


def run_trial(model: offload.Model, batches: list[dict[str, np.ndarray]]) -> Trial:
    """All `batches` submitted at once; every answer awaited."""
    before = _counters(model)
    latencies = [0.0] * len(batches)
    done = threading.Event()
    remaining = [len(batches)]
    lock = threading.Lock()
    started = time.perf_counter()

    def finished(index: int):
        def callback(_future) -> None:
            latencies[index] = (time.perf_counter() - started) * 1e3
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set()
        return callback

    futures = [model.submit(inputs) for inputs in batches]
    for index, future in enumerate(futures):
        future.add_done_callback(finished(index))
    done.wait()
    for future in futures:
        future.result()  # raises the request's error, if any
    after = _counters(model)
    deadline = time.monotonic() + 5  # Triton counts a request just after answering it
    while after[3] - before[3] < len(batches) and time.monotonic() < deadline:
        time.sleep(0.005)
        after = _counters(model)
    return Trial(latencies, (after[0] - before[0]) / 1e3, (after[1] - before[1]) / 1e3,
                 after[2] - before[2])


def measure(model: offload.Model, pattern: str, trials: int, repository: Path,
            configuration: str, instances: int, name: str) -> Row:
    from offload_perf.samples import model_inputs

    sizes = PATTERNS[pattern](model.max_batch_size)
    batches = [model_inputs(model, size, repository, seed=i) for i, size in enumerate(sizes)]
    for inputs in batches:  # warm-up: every shape once
        model.infer(inputs)
    results = []
    for _ in range(trials):
        results.append(run_trial(model, batches))
        time.sleep(0.02)
    slowest = np.array([max(t.latencies_ms) for t in results])
    return Row(model=name, configuration=configuration, instances=instances, pattern=pattern,
               sizes=sizes, trials=trials, worst_ms=float(slowest.max()),
               median_trial_ms=float(np.median(slowest)),
               p90_trial_ms=float(np.percentile(slowest, 90)),
               worst_queue_ms=max(t.queue_ms for t in results),
               worst_idle_ms=max(t.idle_ms(instances) for t in results),
               stalls=sum(t.idle_ms(instances) > STALL_MS for t in results),
               mean_executions=float(np.mean([t.executions for t in results])))


def _instances(folder: Path) -> int:
    from offload_server.model_spec import read_config

    groups = read_config(folder).instance_group
    return sum(g.count or 1 for g in groups) or 1


def main(argv: list[str] | None = None) -> int:
    from offload_server import LocalServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", action="append", help="default: every model")
    parser.add_argument("--trials", type=positive_int, default=30, help="trials per pattern")
    parser.add_argument("--patterns", nargs="+", default=list(PATTERNS),
                        choices=list(PATTERNS))
    parser.add_argument("--committed-only", action="store_true",
                        help="measure only the configurations as committed")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not args.repository.is_dir():
        parser.error(f"argument --repository: no folder {args.repository}")
    models = models_of(args.repository, args.model)
    missing = [m for m in models if not (args.repository / m / "config.pbtxt").is_file()]
    if missing:
        parser.error(f"argument --model: model(s) {', '.join(missing)} not in the repository "
                     f"{args.repository}")
    rows: list[Row] = []
    record = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "command": " ".join(["python -m offload_perf.overlap", *(argv or sys.argv[1:])]),
              "stall_ms": STALL_MS, "rows": rows}
    with tempfile.TemporaryDirectory(prefix="offload-overlap-") as scratch:
        served: list[tuple[str, str, str, int]] = []  # (served name, model, config, instances)
        for name in models:
            source = args.repository / name
            for label, suffix, instances, policy in CONFIGURATIONS:
                if suffix and args.committed_only:
                    continue
                variant_copy(source, Path(scratch) / (name + suffix), instances, policy)
                served.append((name + suffix, name, label,
                               instances or _instances(source)))
        with LocalServer(scratch) as server, \
                offload.Client(server.grpc_url, timeout=60, retries=0) as client:
            for served_name, name, configuration, instances in served:
                model = client.model(served_name)
                for pattern in args.patterns:
                    row = measure(model, pattern, args.trials, args.repository,
                                  configuration, instances, name)
                    rows.append(row)
                    print(f"{name:22s} {configuration:33s} ({instances} instance(s)) "
                          f"{pattern:6s} {'+'.join(map(str, row.sizes)):>11s}: worst "
                          f"{row.worst_ms:7.1f} ms, median {row.median_trial_ms:6.1f} ms, "
                          f"stalls {row.stalls}/{row.trials}", flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    record["rows"] = [asdict(r) for r in rows]
    path = args.output / "overlap.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
