"""What running a model itself costs: a runner timed on one batch, per row."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from offload_server.backends.runner import Runner


@dataclass(frozen=True)
class RunnerCost:
    """A runner's cost per row at one batch size."""

    batch: int
    repeats: int
    cpu_us_per_row: float  # the calling thread's CPU time, median of the repeats
    wall_us_per_row: float  # best of the repeats
    median_wall_us_per_row: float


def time_runner(runner: Runner, chunk: dict[str, np.ndarray], min_seconds: float,
                min_repeats: int = 5) -> RunnerCost:
    """Run `chunk` once to warm up, then repeatedly for at least `min_seconds` and
    `min_repeats` times. The CPU time is the calling thread's: the runners compute on it
    (with one intra-op thread, see ONE_THREAD), and a busy machine stretches it less than
    the wall time."""
    batch = len(next(iter(chunk.values())))
    runner.run(chunk)
    walls: list[float] = []
    cpus: list[float] = []
    spent = 0.0
    while spent < min_seconds or len(walls) < min_repeats:
        wall, cpu = time.perf_counter(), time.thread_time()
        runner.run(chunk)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.thread_time() - cpu)
        spent += walls[-1]
    return RunnerCost(batch, len(walls), float(np.median(cpus)) / batch * 1e6,
                      min(walls) / batch * 1e6, float(np.median(walls)) / batch * 1e6)
