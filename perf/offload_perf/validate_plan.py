"""The planner against a measurement, on one machine, in one command:

    python -m offload_perf.validate_plan                 # ~5 minutes
    python -m offload_perf.validate_plan --quick         # a smoke run (~1 minute)

1. `offload gridsim --modes offloaded` (its own embedded server, the two jet models, 2 jets
   per event, 2 ms of CPU work per event): the number of grid-job workers K one server
   sustains before its queue time grows (gridsim's saturation criterion);
2. `offload perf` sweeps of both models on an embedded server of the same machine, at the
   batch the simulated job sends (2 rows: one event's jets) and concurrency 1..16;
3. `offload plan` from those sweeps, with the workload of the simulated job: events per
   second per worker as gridsim measured it at its smallest K (the job's unhindered rate),
   2 inferences of each model per event, one request per event and model.

The predicted jobs per replica (at saturation, and within --p99-ms) are written beside the
measured K in plan_validation.json (with the machine) in --output, and printed. On a
machine where workers and server share the cores, the workers' own CPU work takes cycles
the sweep's server had, so the prediction is an upper bound there; against a GPU server on
its own machine that share disappears (see perf/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from offload_perf import gridsim, plan, sweep
from offload_perf.options import RESULTS, machine

MODELS = ("jet_tagger", "jet_energy_regression")


def _sweeps(repository: Path, output: Path, batch: int, concurrency: list[int],
            window: float, trials: int, stability: float) -> list[Path]:
    from offload_server import LocalServer

    paths = []
    with LocalServer(repository, models=list(MODELS)) as server:
        for name in MODELS:
            parser = argparse.ArgumentParser()
            sweep.add_arguments(parser)
            args = parser.parse_args([
                name, "--server", server.grpc_url, "--batch", str(batch),
                "--concurrency", *map(str, concurrency), "--window", str(window),
                "--max-trials", str(trials), "--stability", str(stability),
                "--output", str(output)])
            try:
                sweep.run(args)
            except sweep.UnstableError as error:  # kept and flagged in the file
                print(f"   {error}", file=sys.stderr)
            paths.append(output / f"{name}.json")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--workers", default="1,2,4,8,16", help="gridsim's K values")
    parser.add_argument("--jets-per-event", type=int, default=2)
    parser.add_argument("--cpu-ms", type=float, default=2.0)
    parser.add_argument("--p99-ms", type=float, default=20.0,
                        help="the planner's latency target for its second prediction")
    parser.add_argument("--quick", action="store_true", help="tiny windows: a smoke run")
    parser.add_argument("--output", type=Path, default=RESULTS / "plan-validation")
    args = parser.parse_args(argv)
    workers = "1,2" if args.quick else args.workers
    duration, warmup = ("1", "0.5") if args.quick else ("8", "2")
    concurrency = [1, 2] if args.quick else [1, 2, 4, 8, 16]
    window, trials, stability = (0.2, 3, 50.0) if args.quick else (1.0, 8, 10.0)
    args.output.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M")

    print("== 1/3 offload gridsim (offloaded)", flush=True)
    code = gridsim.main(["--modes", "offloaded", "--workers", workers,
                         "--models", ",".join(MODELS), "--jets-per-event",
                         str(args.jets_per_event), "--cpu-ms", str(args.cpu_ms),
                         "--duration", duration, "--warmup", warmup,
                         "--repository", str(args.repository),
                         "--output", str(args.output / "gridsim")])
    if code != 0:
        return code
    simulated = json.loads((args.output / "gridsim" / "gridsim.json").read_text())
    rows = sorted(simulated["rows"], key=lambda r: r["workers"])
    per_job = rows[0]["events_per_second_per_worker"]

    print(f"== 2/3 offload perf at batch {args.jets_per_event} (the job's request)", flush=True)
    paths = _sweeps(args.repository, args.output / "sweeps", args.jets_per_event, concurrency,
                    window, trials, stability)

    print("== 3/3 offload plan", flush=True)
    sweeps = {s.model: s for s in map(plan.load_sweep, paths)}
    loads = {name: plan.ModelLoad(args.jets_per_event, args.jets_per_event,
                                  plan.bytes_per_row(args.repository, name)) for name in MODELS}
    saturation = simulated["saturation"]
    record: dict = {
        "machine": machine(), "date": started,
        "command": " ".join(["python -m offload_perf.validate_plan", *(argv or sys.argv[1:])]),
        "gridsim": {"rows": [{k: r.get(k) for k in ("workers", "events_per_second",
                                                     "events_per_second_per_worker",
                                                     "queue_us_per_request")} for r in rows],
                    "saturation": saturation},
        "workload": {"events_per_second_per_job": per_job, "models": {
            name: {"inferences_per_event": load.inferences_per_event,
                   "rows_per_request": load.rows_per_request,
                   "bytes_per_inference": load.bytes_per_inference}
            for name, load in loads.items()}},
        "sweeps": [str(p) for p in paths]}
    try:
        planned = plan.make_plan(plan.Workload(1, per_job, loads), sweeps, args.p99_ms)
        at_target: float | None = planned.jobs_per_replica
    except plan.PlanError as error:  # no point within the target: say so, keep saturation
        print(f"   {error}", file=sys.stderr)
        planned = plan.make_plan(plan.Workload(1, per_job, loads), sweeps, 1e9)
        at_target = None
    record["prediction"] = {"jobs_per_replica_at_saturation":
                            planned.jobs_per_replica_at_saturation,
                            "jobs_per_replica_at_p99": at_target, "p99_ms": args.p99_ms,
                            "keda_queue_us_per_execution": planned.keda_queue_us_per_execution,
                            "capacity_rows_per_second": {
                                r.model: {"at_saturation": r.capacity.saturation,
                                          "at_p99": r.capacity.at_target if at_target else None}
                                for r in planned.models}}
    best = max(rows, key=lambda r: r["events_per_second"])
    record["prediction"]["events_per_second_at_saturation"] = (
        planned.jobs_per_replica_at_saturation * per_job)
    record["measured"] = {"sustained_workers": saturation.get("sustained_workers"),
                          "first_growing_workers": saturation.get("first_growing_workers"),
                          "criterion": saturation.get("criterion"),
                          "max_events_per_second": best["events_per_second"],
                          "workers_at_max_events_per_second": best["workers"],
                          "job_equivalents_at_max": best["events_per_second"] / per_job}
    path = args.output / "plan_validation.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"job: {per_job:.1f} events/s unhindered (gridsim, K={rows[0]['workers']}), "
          f"{args.jets_per_event} jets per event, one request per event and model")
    print(f"predicted jobs per server: {planned.jobs_per_replica_at_saturation:.1f} at "
          f"saturation" + (f", {at_target:.1f} within p99 {args.p99_ms:g} ms"
                           if at_target else f", none within p99 {args.p99_ms:g} ms"))
    predicted = planned.jobs_per_replica_at_saturation * per_job
    print(f"throughput at saturation: predicted {predicted:.0f} events/s, measured at most "
          f"{best['events_per_second']:.0f} events/s (K={best['workers']}, "
          f"{best['events_per_second'] / per_job:.1f} unhindered jobs' worth)")
    grows = saturation.get("first_growing_workers")
    print(f"gridsim: queue grows from K={grows}; sustains {saturation.get('sustained_workers')}"
          if grows else f"gridsim: queue did not grow up to K={rows[-1]['workers']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
