"""Command-line options and model discovery shared by the repository-wide perf tools."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

# Relative to the current directory (a checkout's root, where the make targets run; an
# installed offload writes there too): every tool's --output default lies under it.
RESULTS = Path("perf") / "results"


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


# ------------------------------------------------------------ argument types and errors
# An invalid command-line argument is argparse's error (usage, exit code 2), never an
# inference exception: these types check values as they are parsed, `usage_error` what can
# only be checked later (against a server's model, say).
def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "an integer >= 1")


def non_negative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: v > 0, "a number > 0")


def non_negative_float(text: str) -> float:
    return _number(text, float, lambda v: v >= 0, "a number >= 0")


def _number(text: str, kind: type, valid: Callable[[float], bool], expected: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{expected} is needed, got {text!r}") from None
    if not valid(value):
        raise argparse.ArgumentTypeError(f"{expected} is needed, got {text!r}")
    return value


def int_list(text: str) -> list[int]:
    """Comma-separated integers >= 1, sorted and without repeats ("4,1,2" -> [1, 2, 4])."""
    try:
        values = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"comma-separated integers are needed, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"counts >= 1 are needed, got {text!r}")
    return values


def choice_list(choices: Sequence[str], what: str = "choice",
                explain: str = "") -> Callable[[str], list[str]]:
    """A type: comma-separated names out of `choices` (dashes read as underscores)."""
    def parse(text: str) -> list[str]:
        names = [n.strip().replace("-", "_") for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what}(s) {unknown or names}; choose from {', '.join(choices)}"
                + (f" ({explain})" if explain else ""))
        return names

    return parse


def keep_parser(parser: argparse.ArgumentParser) -> None:
    """Remember, in the parsed arguments, the parser that parsed them (for `usage_error`)."""
    parser.set_defaults(_parser=parser)


def usage_error(args: argparse.Namespace, message: str) -> NoReturn:
    """An argument found invalid after parsing: argparse's error (usage, exit code 2), from
    the parser `keep_parser` remembered (a plain one where none was)."""
    parser = getattr(args, "_parser", None) or argparse.ArgumentParser()
    parser.error(message)


def models_of(repository: Path, chosen: list[str] | None = None) -> list[str]:
    """The chosen models, or every model folder (one with a config.pbtxt) of the repository."""
    return chosen or sorted(p.name for p in repository.iterdir()
                            if (p / "config.pbtxt").is_file())


def machine() -> dict[str, str]:
    """What a measurement ran on: host, CPU model, cores, memory, GPU (if nvidia-smi names
    one), the load when it started, and the versions that shape the figures. Recorded with
    every result file and model card."""
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
            "memory": memory, "gpu": gpu, "platform": platform.platform(),
            "load_average_1min": f"{os.getloadavg()[0]:.2f}",
            "python": platform.python_version(),
            **{name: installed(name) for name in ("numpy", "onnxruntime", "tensorflow", "torch",
                                                  "scikit-learn", "grpcio", "nvidia-pytriton",
                                                  "locust")}}


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
