"""`offload plan`: how many Triton replicas a workload needs, from `offload perf` sweeps.

    python -m offload_perf.plan perf/results/sweeps/jet_tagger.json \\
        perf/results/sweeps/jet_energy_regression.json \\
        --jobs 2000 --events-per-second 5 --inferences jet_tagger=4 \\
        --inferences jet_energy_regression=4 --p99-ms 50 --repository model_repository

Inputs: one sweep per model (`offload perf MODEL --concurrency ... --batch ...`, measured on
the hardware one replica has), and the workload: `--jobs` running at once, each producing
`--events-per-second`, each event needing `--inferences MODEL=N` rows of each model, sent
`--rows-per-request MODEL=R` rows to a request (default: N, one request per event and model),
and `--bytes MODEL=B` bytes on the wire per row, request and response together (default:
from the model's config in `--repository`). Or all of that in a JSON file (`--workload`).

The arithmetic (every figure per replica; a replica serves every model, as a Triton pod
does):

  * demand of model m per job: d_m = events/s × N_m rows/s;
  * capacity of model m, C_m: the highest throughput (rows/s) among the sweep's points at
    the batch closest to R_m whose p99 latency is within the target; at saturation, the
    highest throughput at that batch whatever the latency;
  * share of a replica one job takes: s = Σ_m d_m / C_m (the models share the replica's
    time; each sweep measured one model alone);
  * jobs per replica = 1 / s; replicas = ceil(jobs × s);
  * bandwidth per replica = jobs per replica × Σ_m d_m × B_m (at the planned load: jobs /
    replicas instead of 1 / s);
  * KEDA threshold: the metric of k8s/base/autoscaling (Triton's queue time summed over
    requests, per model execution, over all models), as it stands at a replica's capacity:
    Σ_m r_m q_m / Σ_m r_m e_m, with r_m the request rate, q_m the queue time per request
    and e_m the executions per request of model m at its capacity point (e_m = 1 where the
    sweep did not record it, which gives a lower, earlier-scaling threshold).

Writes the plan as JSON with --output; prints a table. Errors (exit 1): unreadable or
foreign sweep files, a workload model without a sweep, a target no measured point meets.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import offload


class PlanError(offload.OffloadError):
    """The planner cannot answer: bad sweeps, a bad workload, or an unreachable target."""


# --------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class SweepPoint:
    concurrency: int
    batch: int
    throughput: float  # rows (inferences) per second
    p99_us: float
    queue_us: float  # Triton's queue time per request
    executions_per_request: float | None
    stable: bool


@dataclass(frozen=True)
class Sweep:
    model: str
    points: tuple[SweepPoint, ...]
    source: str
    machine: dict = field(default_factory=dict)


def load_sweep(path: str | Path) -> Sweep:
    """An `offload perf` JSON file (perf/results/sweeps/<model>.json)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except OSError as error:
        raise PlanError(f"cannot read the sweep {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise PlanError(f"{path} is not JSON ({error.msg} at line {error.lineno}); give the "
                        "sweep's .json file, not its .csv or .png") from None
    if not isinstance(record, dict) or "model" not in record or not record.get("points"):
        raise PlanError(f"{path} is not an `offload perf` sweep: it needs 'model' and a "
                        "non-empty 'points' list")
    points = []
    for index, raw in enumerate(record["points"]):
        try:
            points.append(SweepPoint(
                concurrency=int(raw["concurrency"]), batch=int(raw["batch"]),
                throughput=float(raw["throughput"]), p99_us=float(raw["p99_us"]),
                queue_us=float(raw.get("server_queue_us") or 0.0),
                executions_per_request=(float(raw["server_executions_per_request"])
                                        if raw.get("server_executions_per_request") else None),
                stable=bool(raw.get("stable", True))))
        except (KeyError, TypeError, ValueError) as error:
            raise PlanError(f"{path}: point {index} lacks or garbles {error}") from None
    return Sweep(str(record["model"]), tuple(points), str(path), record.get("machine") or {})


@dataclass(frozen=True)
class ModelLoad:
    inferences_per_event: float  # rows of the model per event
    rows_per_request: int
    bytes_per_inference: float  # request + response bytes per row


@dataclass(frozen=True)
class Workload:
    jobs: int
    events_per_second: float  # per job
    models: dict[str, ModelLoad]

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise PlanError(f"jobs must be at least 1, got {self.jobs}")
        if not self.events_per_second > 0:
            raise PlanError(f"events per second must be > 0, got {self.events_per_second}")
        if not self.models:
            raise PlanError("the workload names no model (--inferences MODEL=N)")
        for name, load in self.models.items():
            if not load.inferences_per_event > 0:
                raise PlanError(f"inferences per event of '{name}' must be > 0, got "
                                f"{load.inferences_per_event}")
            if load.rows_per_request < 1:
                raise PlanError(f"rows per request of '{name}' must be at least 1, got "
                                f"{load.rows_per_request}")
            if load.bytes_per_inference < 0:
                raise PlanError(f"bytes per inference of '{name}' must be >= 0")


# --------------------------------------------------------------------------- arithmetic
@dataclass(frozen=True)
class Capacity:
    model: str
    batch: int  # the sweep's batch used (closest to the workload's rows per request)
    at_target: float  # rows/s with p99 within the target
    at_target_point: SweepPoint
    saturation: float  # rows/s, whatever the latency
    note: str = ""


def capacity(sweep: Sweep, rows_per_request: int, p99_us: float) -> Capacity:
    batches = sorted({p.batch for p in sweep.points})
    # The nearest in log2; between two equally near, the smaller (the lower, safer figure).
    batch = min(batches, key=lambda b: (abs(math.log2(b) - math.log2(rows_per_request)), b))
    at_batch = [p for p in sweep.points if p.batch == batch]
    within = [p for p in at_batch if p.p99_us <= p99_us]
    if not within:
        best = min(at_batch, key=lambda p: p.p99_us)
        raise PlanError(
            f"no point of the '{sweep.model}' sweep ({sweep.source}) at batch {batch} meets "
            f"p99 <= {p99_us / 1e3:g} ms: the best is {best.p99_us / 1e3:.2f} ms (concurrency "
            f"{best.concurrency}); this hardware cannot serve that target at this batch size")
    chosen = max(within, key=lambda p: p.throughput)
    note = ""
    if batch != rows_per_request:
        note = (f"measured at batch {batch}, the workload sends {rows_per_request} rows per "
                f"request: sweep `offload perf {sweep.model} --batch {rows_per_request}` for "
                "a closer figure")
    return Capacity(sweep.model, batch, chosen.throughput, chosen,
                    max(p.throughput for p in at_batch), note)


@dataclass
class ModelPlan:
    model: str
    demand_per_job: float  # rows/s
    demand_total: float
    capacity: Capacity
    share_per_job: float  # of one replica
    request_rate_at_capacity: float  # requests/s per replica when it is full


@dataclass
class Plan:
    p99_target_ms: float
    jobs: int
    events_per_second: float
    models: list[ModelPlan]
    share_per_job: float
    jobs_per_replica: float  # at the p99 target
    jobs_per_replica_at_saturation: float
    replicas: int
    planned_jobs_per_replica: float  # jobs / replicas
    bandwidth_per_replica_at_capacity: float  # bytes/s
    bandwidth_per_replica_planned: float  # bytes/s
    keda_queue_us_per_execution: float
    notes: list[str]


def make_plan(workload: Workload, sweeps: dict[str, Sweep], p99_ms: float) -> Plan:
    if not p99_ms > 0:
        raise PlanError(f"the p99 target must be > 0 ms, got {p99_ms}")
    missing = sorted(set(workload.models) - set(sweeps))
    if missing:
        raise PlanError(f"no sweep for model(s) {', '.join(missing)} (sweeps given for: "
                        f"{', '.join(sorted(sweeps)) or 'none'}); run `offload perf MODEL` "
                        "on the replica's hardware first")
    notes: list[str] = []
    rows: list[ModelPlan] = []
    for name, load in workload.models.items():
        sweep = sweeps[name]
        cap = capacity(sweep, load.rows_per_request, p99_ms * 1e3)
        if cap.note:
            notes.append(f"{name}: {cap.note}")
        unstable = [p for p in sweep.points if p.batch == cap.batch and not p.stable]
        if unstable:
            notes.append(f"{name}: {len(unstable)} point(s) at batch {cap.batch} did not reach "
                         "stability in the sweep (figures used as measured)")
        demand = workload.events_per_second * load.inferences_per_event
        rows.append(ModelPlan(name, demand, demand * workload.jobs, cap,
                              demand / cap.at_target, 0.0))
    share = sum(r.share_per_job for r in rows)
    saturation_share = sum(r.demand_per_job / r.capacity.saturation for r in rows)
    jobs_per_replica = 1.0 / share
    replicas = max(1, math.ceil(workload.jobs * share - 1e-9))
    planned = workload.jobs / replicas
    bytes_per_job = sum(r.demand_per_job * workload.models[r.model].bytes_per_inference
                        for r in rows)
    for r in rows:
        r.request_rate_at_capacity = (jobs_per_replica * r.demand_per_job
                                      / workload.models[r.model].rows_per_request)
    queued = sum(r.request_rate_at_capacity * r.capacity.at_target_point.queue_us for r in rows)
    executions = sum(r.request_rate_at_capacity
                     * (r.capacity.at_target_point.executions_per_request or 1.0) for r in rows)
    if any(r.capacity.at_target_point.executions_per_request is None for r in rows):
        notes.append("executions per request not in (some) sweeps: counted as 1, which "
                     "lowers the KEDA threshold (scales up earlier)")
    return Plan(p99_ms, workload.jobs, workload.events_per_second, rows, share,
                jobs_per_replica, 1.0 / saturation_share, replicas, planned,
                jobs_per_replica * bytes_per_job, planned * bytes_per_job,
                queued / executions if executions else 0.0, notes)


# --------------------------------------------------------------------------- command line
def _pairs(values: list[str] | None, option: str, kind=float) -> dict[str, float]:
    out = {}
    for value in values or []:
        name, sep, number = value.partition("=")
        if not sep or not name:
            raise PlanError(f"{option} takes MODEL=VALUE, got {value!r}")
        try:
            out[name] = kind(number)
        except ValueError:
            raise PlanError(f"{option} {value!r}: {number!r} is not a number") from None
    return out


def bytes_per_row(repository: Path, model: str) -> float:
    """Request + response bytes of one row, from the model's config.pbtxt (fixed dims)."""
    import numpy as np

    from offload_server.model_spec import spec_from_folder

    folder = repository / model
    if not (folder / "config.pbtxt").is_file():
        raise PlanError(f"no {folder / 'config.pbtxt'} to size '{model}''s rows; give "
                        f"--bytes {model}=B")
    spec = spec_from_folder(folder)
    total = 0
    for tensor in (*spec.inputs, *spec.outputs):
        if any(d < 0 for d in tensor.dims):
            raise PlanError(f"'{model}' tensor {tensor.name} has variable dims "
                            f"{list(tensor.dims)}; give --bytes {model}=B")
        total += int(np.prod(tensor.dims)) * tensor.numpy_dtype.itemsize
    return float(total)


def workload_from_args(args: argparse.Namespace) -> Workload:
    spec: dict = {}
    if args.workload:
        try:
            spec = json.loads(Path(args.workload).read_text())
        except OSError as error:
            raise PlanError(f"cannot read --workload {args.workload}: {error.strerror}") from None
        except json.JSONDecodeError as error:
            raise PlanError(f"--workload {args.workload} is not JSON: {error.msg}") from None
    jobs = args.jobs if args.jobs is not None else spec.get("jobs")
    rate = (args.events_per_second if args.events_per_second is not None
            else spec.get("events_per_second"))
    if jobs is None or rate is None:
        raise PlanError("the workload needs --jobs and --events-per-second (or 'jobs' and "
                        "'events_per_second' in --workload)")
    file_models = spec.get("models", {})
    inferences = {k: float(v["inferences_per_event"]) for k, v in file_models.items()}
    inferences.update(_pairs(args.inferences, "--inferences"))
    rows = {k: int(v["rows_per_request"]) for k, v in file_models.items()
            if "rows_per_request" in v}
    rows.update({k: int(v) for k, v in _pairs(args.rows_per_request, "--rows-per-request",
                                               int).items()})
    sizes = {k: float(v["bytes_per_inference"]) for k, v in file_models.items()
             if "bytes_per_inference" in v}
    sizes.update(_pairs(args.bytes, "--bytes"))
    unknown = sorted((set(rows) | set(sizes)) - set(inferences))
    if unknown:
        raise PlanError(f"--rows-per-request/--bytes name model(s) {', '.join(unknown)} "
                        "that have no --inferences")
    models = {}
    for name, count in inferences.items():
        size = sizes[name] if name in sizes else bytes_per_row(args.repository, name)
        models[name] = ModelLoad(count, rows.get(name, max(1, round(count))), size)
    return Workload(int(jobs), float(rate), models)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweeps", nargs="+", type=Path,
                        help="`offload perf` JSON files, one per model (perf/results/sweeps/)")
    parser.add_argument("--workload", type=Path, help="JSON: jobs, events_per_second, models: "
                        "{MODEL: {inferences_per_event, rows_per_request, bytes_per_inference}}")
    parser.add_argument("--jobs", type=int, help="jobs running at once")
    parser.add_argument("--events-per-second", type=float, help="events per second of one job")
    parser.add_argument("--inferences", action="append", metavar="MODEL=N",
                        help="rows of MODEL per event (repeat per model)")
    parser.add_argument("--rows-per-request", action="append", metavar="MODEL=R",
                        help="rows per request (default: N, one request per event)")
    parser.add_argument("--bytes", action="append", metavar="MODEL=B",
                        help="request + response bytes per row (default: from --repository)")
    parser.add_argument("--p99-ms", type=float, default=100.0,
                        help="latency target per request, p99 (default %(default)s ms)")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--output", type=Path, help="write the plan as JSON here")


def run(args: argparse.Namespace) -> int:
    workload = workload_from_args(args)
    sweeps = {}
    for path in args.sweeps:
        sweep = load_sweep(path)
        if sweep.model in sweeps:
            raise PlanError(f"two sweeps for '{sweep.model}': {sweeps[sweep.model].source} and "
                            f"{path}")
        sweeps[sweep.model] = sweep
    plan = make_plan(workload, sweeps, args.p99_ms)
    extra = sorted(set(sweeps) - set(workload.models))
    if extra:
        plan.notes.append(f"sweeps not used (no inferences in the workload): {', '.join(extra)}")
    print(report(plan, sweeps))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(asdict(plan), indent=2))
        print(f"wrote {args.output}")
    return 0


def report(plan: Plan, sweeps: dict[str, Sweep]) -> str:
    lines = [f"workload: {plan.jobs} jobs × {plan.events_per_second:g} events/s; target p99 "
             f"{plan.p99_target_ms:g} ms",
             "", f"{'model':24s} {'rows/s per job':>14s} {'batch':>6s} {'capacity @p99':>14s} "
             f"{'saturation':>11s} {'replica share/job':>18s}"]
    for r in plan.models:
        lines.append(f"{r.model:24s} {r.demand_per_job:14,.1f} {r.capacity.batch:6d} "
                     f"{r.capacity.at_target:14,.0f} {r.capacity.saturation:11,.0f} "
                     f"{r.share_per_job:18.5f}")
    machines = sorted({_describe(s.machine) for s in sweeps.values()})
    lines += ["",
              f"replicas needed:            {plan.replicas}",
              f"jobs per replica:           {plan.jobs_per_replica:,.1f} at p99 <= "
              f"{plan.p99_target_ms:g} ms ({plan.jobs_per_replica_at_saturation:,.1f} at "
              "saturation); SONIC: 68 CPU threads per GPU (ProtoDUNE)",
              f"planned load per replica:   {plan.planned_jobs_per_replica:,.1f} jobs",
              f"bandwidth per replica:      {plan.bandwidth_per_replica_planned * 8 / 1e9:.3f} "
              f"Gbit/s planned, {plan.bandwidth_per_replica_at_capacity * 8 / 1e9:.3f} Gbit/s "
              "at capacity",
              f"KEDA threshold:             {plan.keda_queue_us_per_execution:,.0f} us queue "
              "time per execution (k8s/base/autoscaling/scaledobject.yaml `threshold`)",
              f"sweeps measured on:         {'; '.join(machines)}"]
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def _describe(machine: dict) -> str:
    if not machine:
        return "unknown (the sweep file predates recording the machine)"
    gpu = machine.get("gpu", "none")
    return (f"{machine.get('cpu', '?')} ({machine.get('cores', '?')} cores), "
            f"GPU {gpu if gpu != 'none' else 'none (CPU server)'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="offload plan",
                                     description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except offload.OffloadError as error:
        print(f"offload plan: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
