"""What dynamic batching buys: N concurrent batch-1 clients against each model served with
its dynamic batcher and with the batcher removed, side by side on one server.

    python -m offload_perf.batching --clients 16              # every model of the repository
    python -m offload_perf.batching --model jet_tagger --window 0.5

The second variant of each model is generated into a temporary repository (config copied,
`dynamic_batching { … }` removed, name suffixed `_nobatch`); both are served by one
embedded server and measured with the same stable-window method as `offload perf`.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import offload
from offload_perf.options import models_of, repository_parser, server_totals
from offload_perf.sweep import generated_inputs, measure


def variants(repository: Path, models: list[str], target: Path) -> None:
    """Copy each model, and a copy without dynamic batching, into `target`."""
    from offload_server import model_config
    from offload_server.errors import ModelRepositoryError
    from offload_server.model_spec import read_config

    for name in models:
        source = repository / name
        config = read_config(source)
        if not config.HasField("dynamic_batching"):
            raise ModelRepositoryError(
                f"model '{name}' has no dynamic_batching block: nothing to compare")
        shutil.copytree(source, target / name)
        plain = target / f"{name}_nobatch"
        shutil.copytree(source, plain)
        config.ClearField("dynamic_batching")  # its queue policy goes with it
        config.name = f"{name}_nobatch"
        model_config.write(plain / "config.pbtxt", config)


def main(argv: list[str] | None = None) -> int:
    from offload_server import LocalServer

    parser = repository_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args(argv)
    models = models_of(args.repository, args.model)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        variants(args.repository, models, Path(scratch))
        with LocalServer(scratch) as server, offload.Client(server.grpc_url) as client:
            for name in models:
                row = {"model": name, "clients": args.clients}
                for variant in (name, f"{name}_nobatch"):
                    model = client.model(variant)
                    inputs = generated_inputs(model, 1)
                    before = server_totals(model)
                    point = measure(model, inputs, 1, args.clients, window=args.window,
                                    stability=args.stability, max_trials=args.max_trials)
                    after = server_totals(model)
                    executions = after.executions - before.executions
                    key = "batched" if variant == name else "unbatched"
                    row[key] = {"throughput": point.throughput, "p50_us": point.p50_us,
                                "p99_us": point.p99_us, "stable": point.stable,
                                "mean_batch": (after.inferences - before.inferences)
                                / max(executions, 1)}
                row["ratio"] = row["batched"]["throughput"] / row["unbatched"]["throughput"]
                rows.append(row)
                print(f"{name}: {args.clients} clients at batch 1: "
                      f"{row['batched']['throughput']:,.0f} inf/s with dynamic batching "
                      f"(mean batch {row['batched']['mean_batch']:.1f}, p99 "
                      f"{row['batched']['p99_us'] / 1e3:.1f} ms) vs "
                      f"{row['unbatched']['throughput']:,.0f} without (p99 "
                      f"{row['unbatched']['p99_us'] / 1e3:.1f} ms): ratio {row['ratio']:.2f}",
                      flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "dynamic_batching.json").write_text(json.dumps(rows, indent=2))
    unstable = [r["model"] for r in rows for k in ("batched", "unbatched") if not r[k]["stable"]]
    if unstable:
        print(f"not stable within {args.max_trials} windows: {sorted(set(unstable))}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
