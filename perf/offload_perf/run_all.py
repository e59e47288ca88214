"""`make perf`: every measurement of perf/ on the embedded server, in one bounded run.

    python -m offload_perf.run_all            # sweeps, as-a-service, dynamic batching, overlap
    python -m offload_perf.run_all --quick    # the same with tiny windows (smoke run)

Results go to perf/results/ (or --output); perf/RESULTS.md records the full run's figures
with the machine they ran on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from offload_perf import batching, overlap, service, sweep
from offload_perf.options import RESULTS, models_of


def main(argv: list[str] | None = None) -> int:
    from offload_server import LocalServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--quick", action="store_true", help="tiny windows: a smoke run")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    window, trials = ("0.2", "3") if args.quick else ("1", "8")
    stability = "50" if args.quick else "10"
    common = ["--window", window, "--max-trials", trials, "--stability", stability]
    models = models_of(args.repository)
    failures = 0
    with LocalServer(args.repository) as server:
        for name in models:
            print(f"== offload perf {name}", flush=True)
            parsed = argparse.ArgumentParser()
            sweep.add_arguments(parsed)
            options = parsed.parse_args([
                name, "--server", server.grpc_url, "--concurrency", "1", "4", "--batch", "1",
                "--output", str(args.output / "sweeps"), *common])
            try:
                sweep.run(options)
            except sweep.UnstableError as error:
                print(f"   {error}", file=sys.stderr)
                failures += 1
    for tool in (service, batching):
        print(f"== {tool.__name__}", flush=True)
        failures += tool.main(["--repository", str(args.repository), "--output",
                               str(args.output), *common]) != 0
    print("== offload_perf.overlap", flush=True)  # worst case of overlapping requests
    failures += overlap.main(["--repository", str(args.repository), "--output",
                              str(args.output), "--trials", "3" if args.quick else "30"]) != 0
    print(f"== done; {failures} step(s) reported unstable points" if failures else "== done")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
