"""What a grid job saves, and how fast `offload apply` goes: one reproducible command.

    python -m offload_perf.savings                # ~4 minutes on 2 cores
    python -m offload_perf.savings --quick        # a smoke run (seconds per point)

1. **The job's CPU per event** (its own getrusage, every thread) for the jet workload —
   `jet_tagger` + `jet_energy_regression` on 2 jets per event, no other work per event
   (``--cpu-ms 0``), one worker — measured by the grid-job simulator
   (:mod:`offload_perf.gridsim`) in five ways:

   - in-process, one call per model per event (block 1) and per 128 events (256 jets);
   - offloaded, one request per model per event, and per 128 events;
   - offloaded from a single-threaded event loop that submits every event to an
     ``offload.Batcher(max_delay=None)`` and collects it `--lag` events later
     (``offloaded_batched``, acquire/produce);

   with the embedded server's CPU per event beside each offloaded figure.
2. **`offload apply` throughput** on the sample PFNano file (``make data``; made here if
   missing): jets/s of a plain client loop over the same jets (read the file, gather the
   jets, compute the inputs, ``infer`` both models chunk after chunk), of ``offload apply``
   serially and with ``--workers 2``, all against the same embedded server, best of
   `--repeat` runs each.

Writes ``perf/results/savings.json`` (with the machine) and prints a summary. Paths are
relative to the current directory (a checkout's root): --repository model_repository,
--sample data/pfnano_sample.root, --output perf/results. The server
and the job share this machine's cores, so figures on a busy machine are noisy: compare
modes within one run.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from offload_perf.options import RESULTS, machine

MODELS = ("jet_tagger", "jet_energy_regression")


def _gridsim(server: str, pgid: int, output: Path, modes: str, block: int,
             args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "offload_perf.gridsim", "--server", server,
               "--server-pgid", str(pgid), "--repository", str(args.repository),
               "--workers", "1", "--modes", modes, "--block", str(block), "--cpu-ms", "0",
               "--lag", str(args.lag), "--duration", str(args.duration),
               "--warmup", str(args.warmup), "--output", str(output)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((output / "gridsim.json").read_text())


def job_cpu(server: str, server_pgid: int, args: argparse.Namespace, scratch: Path) -> list:
    rows = []
    for block, modes in ((1, "in_process,offloaded,offloaded_batched"),
                         (128, "in_process,offloaded")):
        record = _gridsim(server, server_pgid, scratch / f"block-{block}", modes, block, args)
        for row in record["rows"]:
            server_cpu = row["server_cpu_ms_per_event"]
            rows.append({
                "mode": row["mode"], "block": block, "events": row["events"],
                "events_per_second": row["events_per_second"],
                "job_cpu_us_per_event": row["job_model_cpu_us_per_event"],
                "job_cpu_us_per_jet": row["job_model_cpu_us_per_event"] / 2,
                "server_cpu_us_per_event": 1e3 * server_cpu if server_cpu is not None else None,
            })
            print(f"  {row['mode']:18s} block {block:3d}: job "
                  f"{rows[-1]['job_cpu_us_per_event']:7.1f} us/event "
                  f"({row['events_per_second']:.0f} events/s)", file=sys.stderr)
    return rows


def client_loop(paths: list[Path], server: str, step: int) -> tuple[int, float]:
    """A plain loop: read, gather, preprocess and infer chunk after chunk, one process."""
    import uproot

    import offload
    from offload.physics import pfnano

    started = time.perf_counter()
    jets = 0
    with offload.Client(server) as client:
        models = {m: client.model(m) for m in MODELS}
        for path in paths:
            with uproot.open(path) as file:
                tree = file["Events"]
                for start in range(0, tree.num_entries, step):
                    arrays = tree.arrays(list(pfnano.BRANCHES), entry_start=start,
                                         entry_stop=start + step)
                    gathered = pfnano.gather(arrays, first_entry=start)
                    inputs = gathered.inputs(MODELS)
                    for name, model in models.items():
                        model.infer(inputs[name])
                    jets += gathered.n_jets
    return jets, time.perf_counter() - started


def apply_rate(paths: list[Path], server: str, step: int, workers: int | None,
               scratch: Path) -> tuple[int, float, float]:
    out = scratch / f"apply-{workers or 0}-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "offload.cli", "apply", *map(str, paths), "--server",
               server,
               "--output", str(out), "--step-size", str(step), "--no-progress"]
    if workers:
        command += ["--workers", str(workers)]
    started = time.perf_counter()
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    match = re.search(r"(\d+) jets in ([\d.]+) s", result.stdout)
    assert match, result.stdout
    # the command's own figure (first chunk to last output renamed, after the Dask cluster
    # is up) and the process's wall time (Python, imports and cluster start-up included)
    return int(match.group(1)), float(match.group(2)), wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--sample", type=Path, default=Path("data") / "pfnano_sample.root")
    parser.add_argument("--duration", type=float, default=8.0,
                        help="seconds per job-CPU point")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--lag", type=int, default=256)
    parser.add_argument("--step", type=int, default=250, help="entries per apply chunk")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--copies", type=int, default=4,
                        help="apply runs over this many copies of the sample file")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.repeat = 1.5, 0.5, 1
    if not args.sample.is_file():
        from offload_training.jets.pfnano_sample import write_sample

        print(f"making {args.sample} (make data) ...", file=sys.stderr)
        write_sample(args.sample, 2000)
    from offload_server import LocalServer

    record: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
                    "command": " ".join(["python -m offload_perf.savings",
                                         *(argv if argv is not None else sys.argv[1:])]),
                    "settings": {k: (str(v) if isinstance(v, Path) else v)
                                 for k, v in vars(args).items()}}
    with LocalServer(args.repository, models=list(MODELS)) as server, \
            tempfile.TemporaryDirectory() as scratch:
        print("job CPU per event (gridsim, K=1, 2 jets/event, --cpu-ms 0):", file=sys.stderr)
        record["job_cpu"] = job_cpu(server.grpc_url, server.pid, args, Path(scratch))
        print("offload apply on the sample file:", file=sys.stderr)
        inputs = []
        for k in range(args.copies):
            copy = Path(scratch) / f"sample_{k}.root"
            copy.write_bytes(args.sample.read_bytes())
            inputs.append(copy)
        rates: dict[str, list] = {"client_loop": [], "apply_serial": [], "apply_2_workers": []}
        for _ in range(args.repeat):
            jets, seconds = client_loop(inputs, server.grpc_url, args.step)
            rates["client_loop"].append({"jets": jets, "seconds": seconds})
            for key, workers in (("apply_serial", None), ("apply_2_workers", 2)):
                jets, seconds, wall = apply_rate(inputs, server.grpc_url, args.step,
                                                 workers, Path(scratch))
                rates[key].append({"jets": jets, "seconds": seconds, "process_wall_s": wall})
        record["apply"] = {key: {"runs": runs,
                                 "best_jets_per_second": max(r["jets"] / r["seconds"]
                                                             for r in runs),
                                 "best_jets_per_process_second": max(
                                     r["jets"] / r.get("process_wall_s", r["seconds"])
                                     for r in runs)}
                           for key, runs in rates.items()}
    by = {(r["mode"], r["block"]): r for r in record["job_cpu"]}
    base1, base128 = by["in_process", 1], by["in_process", 128]
    batched = by["offloaded_batched", 1]
    record["ratios"] = {
        "in_process_block1_over_offloaded_batched":
            base1["job_cpu_us_per_event"] / batched["job_cpu_us_per_event"],
        "in_process_block128_over_offloaded_batched":
            base128["job_cpu_us_per_event"] / batched["job_cpu_us_per_event"],
        "in_process_block1_over_offloaded_block1":
            base1["job_cpu_us_per_event"] / by["offloaded", 1]["job_cpu_us_per_event"],
        "in_process_block128_over_offloaded_block128":
            base128["job_cpu_us_per_event"] / by["offloaded", 128]["job_cpu_us_per_event"],
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "savings.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.output / 'savings.json'}", file=sys.stderr)
    for row in record["job_cpu"]:
        server_cpu = row["server_cpu_us_per_event"]
        print(f"{row['mode']:18s} block {row['block']:3d}: job CPU "
              f"{row['job_cpu_us_per_event']:7.1f} us/event"
              + (f", server CPU {server_cpu:7.1f} us/event" if server_cpu else ""))
    for key, value in record["ratios"].items():
        print(f"{key}: {value:.1f}x")
    for key, value in record["apply"].items():
        print(f"{key}: {value['best_jets_per_second']:,.0f} jets/s "
              f"({value['best_jets_per_process_second']:,.0f} counting process start-up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
