"""Command-line options and model discovery shared by the repository-wide perf tools."""

from __future__ import annotations

import argparse
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"


def repository_parser(description: str) -> argparse.ArgumentParser:
    """--repository, --model, the stable-window settings of `offload perf`, --output."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", action="append", help="default: every model")
    parser.add_argument("--window", type=float, default=1.0, help="seconds per window")
    parser.add_argument("--stability", type=float, default=10.0, help="percent")
    parser.add_argument("--max-trials", type=int, default=8, help="windows per point at most")
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser


def models_of(repository: Path, chosen: list[str] | None = None) -> list[str]:
    """The chosen models, or every model folder (one with a config.pbtxt) of the repository."""
    return chosen or sorted(p.name for p in repository.iterdir()
                            if (p / "config.pbtxt").is_file())


def machine() -> dict[str, str]:
    """What a measurement ran on: host, CPU model, cores, GPU (if nvidia-smi names one), and
    the versions that shape the figures. Recorded with every result file."""
    import contextlib
    import os
    import platform
    import shutil
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = "none"
    if shutil.which("nvidia-smi"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10).stdout.strip() or gpu

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    memory = "unknown"
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kib = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
        memory = f"{kib / 2**20:.0f} GiB"
    return {"host": platform.node(), "cpu": cpu, "cores": str(os.cpu_count()),
            "memory": memory, "gpu": gpu, "python": platform.python_version(),
            **{name: installed(name) for name in ("onnxruntime", "tensorflow", "torch",
                                                  "grpcio", "nvidia-pytriton", "locust")}}


def server_totals(model):  # -> offload.stats.ServerStats | None
    """Triton's statistics of `model` (an `offload.Model`) as one row. A handle that pins a
    version gets that version's row; one that names none gets a row per loaded version (its
    requests all go to the highest), which this sums: counts added, times per request
    weighted by requests. None if the server has no statistics for it."""
    from offload.stats import ServerStats

    rows = model.server_stats()
    if not rows:
        return None
    if len(rows) == 1:
        return rows[0]
    requests = sum(r.requests for r in rows)

    def mean(field: str) -> float:
        total = sum(getattr(r, field) * r.requests for r in rows)
        return total / requests if requests else 0.0

    return ServerStats(rows[0].model, ",".join(r.version for r in rows), requests,
                       sum(r.executions for r in rows), sum(r.inferences for r in rows),
                       mean("queue_us"), mean("compute_input_us"), mean("compute_infer_us"),
                       mean("compute_output_us"), sum(r.failures for r in rows))
