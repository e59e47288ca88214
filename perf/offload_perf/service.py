"""As-a-service efficiency: each model in-process vs served, at the same batch size.

    python -m offload_perf.service                     # every model of model_repository/

In-process runs the artifact with the same runner code, config and thread settings the
server's backend uses (`offload_server.backends.load_in_process`), in this process, with no
Triton and no network; served sends the same inputs through the offload client to an
embedded server on this machine, from 1 and from 4 client threads. Both are measured with
the stable-window method of `offload perf`; the ratio is served / in-process.
"""

from __future__ import annotations

import json
import sys

import numpy as np

import offload
from offload_perf.options import models_of, repository_parser
from offload_perf.sweep import generated_inputs, measure


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

    args = repository_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    names = models_of(args.repository, args.model)
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
