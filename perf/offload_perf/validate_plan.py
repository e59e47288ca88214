"""The planner against a measurement, on one machine, in one command:

    python -m offload_perf.validate_plan                 # ~5 minutes
    python -m offload_perf.validate_plan --quick         # a smoke run (~1 minute)
    python -m offload_perf.validate_plan --models calo_shower_generator   # a fast-sim job

One embedded server with the two jet models serves both measurements. With --pin (the
default on a machine of 2+ cores) it runs on the first half of the cores and everything else
(gridsim's workers, the sweep's client threads) on the other half, so that the server has
the same CPU in both measurements and the job's own work does not take it:

1. `offload gridsim --modes offloaded --server <it>` (2 jets or 4 showers per event, --cpu-ms
   of CPU work per event, default 0: the job then mostly drives the server): the number of grid-job
   workers K the server sustains before its queue time grows (gridsim's criterion), and
   the most events/s it delivered;
2. `offload perf` sweeps of each model at the batch the simulated job sends (one event's
   jets or showers) and concurrency 1..16;
3. `offload plan` from those sweeps, with the workload of the simulated job: events per
   second per worker as gridsim measured it at its smallest K (the job's unhindered rate),
   one request per event and model.

The predicted jobs per replica and events/s at saturation (and within --p99-ms) are written
beside the measured ones in plan_validation.json (with the machine) in --output, and
printed. A closed-loop worker slows down when the server does, so K at queue growth
overstates the jobs a server sustains at full speed; the comparable figure is the most
events/s delivered, in unhindered jobs' worth.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from offload_perf import gridsim, plan, sweep
from offload_perf.options import RESULTS, machine

MODELS = ("jet_tagger", "jet_energy_regression")
SHOWER_MODEL = "calo_shower_generator"


def _sweeps(address: str, output: Path, batches: dict[str, int], concurrency: list[int],
            window: float, trials: int, stability: float) -> list[Path]:
    paths = []
    for name, batch in batches.items():
        parser = argparse.ArgumentParser()
        sweep.add_arguments(parser)
        args = parser.parse_args([
            name, "--server", address, "--batch", str(batch),
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
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"the job's models: the jet models (default) or {SHOWER_MODEL} "
                             "alone (a fast-simulation job)")
    parser.add_argument("--jets-per-event", type=int, default=2)
    parser.add_argument("--showers-per-event", type=int, default=4)
    parser.add_argument("--cpu-ms", type=float, default=0.0,
                        help="gridsim's CPU work per event besides preprocessing (ms)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="leave server and clients on every core")
    parser.add_argument("--p99-ms", type=float, default=20.0,
                        help="the planner's latency target for its second prediction")
    parser.add_argument("--quick", action="store_true", help="tiny windows: a smoke run")
    parser.add_argument("--output", type=Path, default=RESULTS / "plan-validation")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or not set(models) <= {*MODELS, SHOWER_MODEL}:
        parser.error(f"--models: a subset of {', '.join((*MODELS, SHOWER_MODEL))}")
    rows_per_event = {m: args.showers_per_event if m == SHOWER_MODEL else args.jets_per_event
                      for m in models}
    workers = "1,2" if args.quick else args.workers
    duration, warmup = ("1", "0.5") if args.quick else ("8", "2")
    concurrency = [1, 2] if args.quick else [1, 2, 4, 8, 16]
    window, trials, stability = (0.2, 3, 50.0) if args.quick else (1.0, 8, 10.0)
    args.output.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M")
    cores = sorted(os.sched_getaffinity(0))
    pin = args.pin and len(cores) >= 2
    server_cores, client_cores = cores[:len(cores) // 2], cores[len(cores) // 2:]

    from offload_server import LocalServer

    if pin:
        os.sched_setaffinity(0, server_cores)  # tritonserver and its stubs inherit this
    server = LocalServer(args.repository, models=models).start()
    try:
        if pin:
            os.sched_setaffinity(0, client_cores)  # this process, its threads and workers
        print(f"== server at {server.grpc_url}"
              + (f" on cores {server_cores}, clients on {client_cores}" if pin else ""),
              flush=True)
        print("== 1/3 offload gridsim (offloaded)", flush=True)
        code = gridsim.main(["--modes", "offloaded", "--workers", workers,
                             "--server", server.grpc_url,
                             "--models", ",".join(models), "--jets-per-event",
                             str(args.jets_per_event), "--showers-per-event",
                             str(args.showers_per_event), "--cpu-ms", str(args.cpu_ms),
                             "--duration", duration, "--warmup", warmup,
                             "--repository", str(args.repository),
                             "--output", str(args.output / "gridsim")])
        if code != 0:
            return code
        simulated = json.loads((args.output / "gridsim" / "gridsim.json").read_text())
        rows = sorted(simulated["rows"], key=lambda r: r["workers"])
        per_job = rows[0]["events_per_second_per_worker"]
        print(f"== 2/3 offload perf at the job's request size {rows_per_event}", flush=True)
        paths = _sweeps(server.grpc_url, args.output / "sweeps", rows_per_event,
                        concurrency, window, trials, stability)
    finally:
        server.stop()
        if pin:
            os.sched_setaffinity(0, cores)

    print("== 3/3 offload plan", flush=True)
    sweeps = {s.model: s for s in map(plan.load_sweep, paths)}
    loads = {name: plan.ModelLoad(rows, rows, plan.bytes_per_row(args.repository, name))
             for name, rows in rows_per_event.items()}
    saturation = simulated["saturation"]
    record: dict = {
        "machine": machine(), "date": started,
        "pinning": {"server_cores": server_cores, "client_cores": client_cores}
        if pin else None, "cpu_ms": args.cpu_ms,
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
          f"rows per event {rows_per_event}, one request per event and model")
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
