"""What running a model itself costs a grid job: CPU per row in-process, on one core, per
version and batch size.

    python -m offload_perf.model_cost                                  # jet_tagger, every version
    python -m offload_perf.model_cost --model jet_tagger --versions 1,2 --batches 1,32

Each version is loaded by the server's own runner code (`load_checked` with the model's
config, as `offload_server.backends.load_in_process` does) with one intra-op and one
inter-op thread — a grid slot is one core — and run on rows of the model's validation sample
(`offload_perf.samples.model_inputs`: the jets' inputs computed by `offload.physics.jets`).
Default batches: 1 and the model's `max_batch_size`. Per point, repeated for `--seconds`:
the calling thread's CPU time per row (median; the runners compute on the calling thread
with one intra-op thread) and the wall time per row (best). The thread's CPU time is the
steadier figure on a shared machine; the best wall time the one closest to a quiet core.

Writes `results/model_cost.json` (with the machine) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

import offload
from offload_perf.options import RESULTS, machine


def measure(folder: Path, version: str, inputs: dict[str, np.ndarray], batches: list[int],
            seconds: float) -> list[dict]:
    from offload_server.backends import load_in_process
    from offload_server.backends.cost import time_runner

    runner = load_in_process(folder, version, one_thread=True)
    rows = []
    for batch in batches:
        cost = time_runner(runner, {k: np.ascontiguousarray(v[:batch])
                                    for k, v in inputs.items()}, seconds)
        rows.append({"version": version, **asdict(cost)})
    return rows


def main(argv: list[str] | None = None) -> int:
    from offload_perf.samples import JET_MODELS, jet_sample
    from offload_server.model_spec import served_versions, spec_from_folder

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default="jet_tagger", choices=sorted(JET_MODELS))
    parser.add_argument("--versions", default=None,
                        help="comma-separated (default: every version the config serves)")
    parser.add_argument("--batches", default=None,
                        help="comma-separated (default: 1 and the model's max_batch_size)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per point")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    folder = args.repository / args.model
    if not (folder / "config.pbtxt").is_file():
        print(f"model_cost: no model '{args.model}' in {args.repository}", file=sys.stderr)
        return 1
    versions = (args.versions.split(",") if args.versions
                else [str(v) for v in served_versions(folder)])
    max_batch = spec_from_folder(folder).max_batch_size
    batches = ([int(b) for b in args.batches.split(",")] if args.batches
               else sorted({1, max_batch}))
    constituents, jets = jet_sample(args.repository)
    rows_needed = max(batches)
    pick = np.resize(np.arange(len(jets)), rows_needed)
    inputs = JET_MODELS[args.model](constituents[pick], jets[pick])
    rows = []
    for version in versions:
        try:
            rows += measure(folder, version, inputs, batches, args.seconds)
        except offload.OffloadError as error:
            print(f"model_cost: {args.model} version {version}: {error}", file=sys.stderr)
            return 1
    record = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "command": " ".join(["python -m offload_perf.model_cost",
                                   *(argv if argv is not None else sys.argv[1:])]),
              "model": args.model, "threads": "1 intra-op, 1 inter-op", "rows": rows}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "model_cost.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{'version':>7} {'batch':>5} {'CPU us/row':>11} {'wall us/row (best)':>19}")
    for row in rows:
        print(f"{row['version']:>7} {row['batch']:>5} {row['cpu_us_per_row']:>11.1f} "
              f"{row['wall_us_per_row']:>19.1f}")
    print(f"wrote {args.output / 'model_cost.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
