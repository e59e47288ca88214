"""What the embedded server's front costs: the offload client through the front (TCP on
127.0.0.1, credentials and sizes checked) vs straight to Triton's private unix socket.

Same server, same identity model (Triton's Python backend echoing an FP32 tensor), side by
side in one run, in interleaved rounds:

- per call at 16 B, 1 MB and 16 MB (median ms);
- pipelined at batch 1 (16 B), `submit()` with 16 requests in flight (inferences/s).

    python perf/bench_front.py          # results to perf/results/bench_front.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from bench_client import SIZES, identity_repository, interleaved, pipelined_offload
from rich.console import Console
from rich.table import Table

import offload
from offload_perf.options import machine
from offload_server import LocalServer

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="window per figure")
    parser.add_argument("--depth", type=int, default=16, help="requests in flight, pipelined")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=160)
    record: dict = {"machine": machine(), "per_call": [], "pipelined": {}}
    with tempfile.TemporaryDirectory() as scratch, \
            LocalServer(identity_repository(Path(scratch))) as server, \
            offload.Client(server.grpc_url) as through_front, \
            offload.Client(server.triton_grpc_url) as direct:
        models = {"front": through_front.model("identity"), "direct": direct.model("identity")}
        for label, size in SIZES.items():
            x = np.random.default_rng(0).random(size, dtype=np.float32)
            console.print(f"per call {label}: {args.rounds} interleaved rounds")
            medians = interleaved({name: (lambda m=model, x=x: m.infer(INPUT0=x))
                                   for name, model in models.items()},
                                  args.seconds * 2, rounds=args.rounds)
            record["per_call"].append({"size": label} | {k: v * 1e3 for k, v in medians.items()})
        x = np.ones(4, np.float32)
        samples: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, model in models.items():
                samples[name].append(pipelined_offload(model, x, args.depth,
                                                       args.seconds / 2))
        record["pipelined"] = {"depth": args.depth} | {
            name: statistics.median(values) for name, values in samples.items()}

    table = Table(title="per call through the front vs straight to Triton (median ms)")
    for column in ("size", "direct", "front", "front − direct (µs)", "front / direct"):
        table.add_column(column, justify="right")
    for row in record["per_call"]:
        table.add_row(row["size"], f"{row['direct']:.3f}", f"{row['front']:.3f}",
                      f"{(row['front'] - row['direct']) * 1e3:.0f}",
                      f"{row['front'] / row['direct']:.2f}")
    console.print(table)
    pipelined = record["pipelined"]
    console.print(f"pipelined, {pipelined['depth']} in flight: direct "
                  f"{pipelined['direct']:,.0f}/s, front {pipelined['front']:,.0f}/s, "
                  f"front / direct {pipelined['front'] / pipelined['direct']:.2f}")
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "bench_front.json").write_text(json.dumps(record, indent=2))
    console.print(f"wrote {args.output / 'bench_front.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
