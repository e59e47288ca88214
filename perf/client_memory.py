"""The offload client's own memory over time, without locust: one Client, the three physics
models, `infer` and `submit` alternating as fast as they go against an embedded server; RSS
and tracemalloc's traced memory printed every window, then the lines that grew most.

    python perf/client_memory.py --windows 6 --window 20

Tells the client's growth from locust's own bookkeeping in a soak (perf/RESULTS.md).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

import offload
from offload_perf.samples import model_inputs
from offload_server import LocalServer

MODELS = ("jet_tagger", "jet_energy_regression", "calo_shower_generator")


def rss_mb() -> float:
    with Path("/proc/self/status").open() as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before tracing")
    parser.add_argument("--window", type=float, default=20.0, help="seconds per line")
    parser.add_argument("--windows", type=int, default=6)
    args = parser.parse_args(argv)
    with LocalServer(args.repository, models=list(MODELS)) as server, \
            offload.Client(server.grpc_url) as client:
        models = {name: client.model(name) for name in MODELS}
        inputs = {name: model_inputs(m, 4, args.repository) for name, m in models.items()}

        def burst(seconds: float) -> int:
            end, rounds = time.monotonic() + seconds, 0
            while time.monotonic() < end:
                for name, model in models.items():
                    if rounds % 2:
                        model.infer(inputs[name])
                    else:
                        model.submit(inputs[name]).result()
                rounds += 1
            return rounds * len(models)

        burst(args.warmup)
        tracemalloc.start(25)
        before, started, calls = tracemalloc.take_snapshot(), time.monotonic(), 0
        for _ in range(args.windows):
            calls += burst(args.window)
            print(f"t={time.monotonic() - started:5.0f} s  calls={calls:7d}  "
                  f"rss={rss_mb():.1f} MB  traced={tracemalloc.get_traced_memory()[0] / 1e6:.2f}"
                  " MB", flush=True)
        for stat in tracemalloc.take_snapshot().compare_to(before, "lineno")[:5]:
            print(stat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
