"""As-a-service efficiency: each model in-process vs served, at the same batch size.

    python -m offload_perf.service                     # every model of model_repository/

In-process runs the artifact with the same runner code, config and thread settings the
server's backend uses (`offload_server.backends.load_in_process`), in this process, with no
Triton and no network; served sends the same inputs through the offload client to an
embedded server on this machine, from 1 and from 4 client threads. Both are measured with
the stable-window method of `offload perf`; the ratio is served / in-process.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import offload
from offload_perf.sweep import generated_inputs, measure

RESULTS = Path(__file__).resolve().parents[1] / "results"


class _InProcess:
    """The runner behind the interface `measure` drives (infer, server_stats)."""

    def __init__(self, runner) -> None:
        self._runner = runner

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._runner.run(inputs)

    def server_stats(self) -> list:
        return []


def main(argv: list[str] | None = None) -> int:
    from offload_server import LocalServer
    from offload_server.backends import load_in_process

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", action="append", help="default: every model")
    parser.add_argument("--window", type=float, default=1.0)
    parser.add_argument("--stability", type=float, default=10.0)
    parser.add_argument("--max-trials", type=int, default=8)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    names = args.model or sorted(p.name for p in args.repository.iterdir()
                                 if (p / "config.pbtxt").is_file())
    rows, unstable = [], []
    settings = {"window": args.window, "stability": args.stability,
                "max_trials": args.max_trials}
    with LocalServer(args.repository, models=names) as server, \
            offload.Client(server.grpc_url) as client:
        for name in names:
            served = client.model(name)
            local = _InProcess(load_in_process(args.repository / name))
            for batch in sorted({1, served.max_batch_size or 1}):
                inputs = generated_inputs(served, batch)
                row = {"model": name, "batch": batch}
                for label, target, threads in (("in_process", local, 1),
                                               ("served_c1", served, 1),
                                               ("served_c4", served, 4)):
                    point = measure(target, inputs, batch, threads, **settings)
                    row[label] = point.throughput
                    row[f"{label}_p50_us"] = point.p50_us
                    if not point.stable:
                        unstable.append((name, batch, label))
                row["ratio_c1"] = row["served_c1"] / row["in_process"]
                row["ratio_c4"] = row["served_c4"] / row["in_process"]
                rows.append(row)
                print(f"{name} batch {batch}: in-process {row['in_process']:,.0f}/s, served "
                      f"{row['served_c1']:,.0f}/s (c1) {row['served_c4']:,.0f}/s (c4): "
                      f"ratio {row['ratio_c1']:.2f} / {row['ratio_c4']:.2f}", flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "service_efficiency.json").write_text(json.dumps(rows, indent=2))
    if unstable:
        print(f"not stable within {args.max_trials} windows: {unstable}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
