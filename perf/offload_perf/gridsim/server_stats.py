"""The server's side of a measurement window: Triton's counters per model (deltas over the
window) and the CPU of the server's process group."""

from __future__ import annotations

import os
from pathlib import Path

import offload


def process_group_cpu(pgid: int) -> float | None:
    """CPU seconds (user + system) of the live processes of process group `pgid` (the
    embedded server: tritonserver and its backend stubs), from /proc; None off Linux."""
    tick = os.sysconf("SC_CLK_TCK")
    total, seen = 0.0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            seen = True
            total += (int(fields[11]) + int(fields[12])) / tick
    return total if seen else None


def server_counters(models: dict[str, offload.Model]) -> dict[str, tuple]:
    """Cumulative (requests, executions, inferences, queue µs, compute infer µs) per model:
    every loaded version's, for a model named without one (its requests go to the highest)."""
    from offload_perf.options import server_totals

    counters = {}
    for name, model in models.items():
        row = server_totals(model)
        if row is None:
            counters[name] = (0, 0, 0, 0.0, 0.0)
            continue
        n = row.requests
        counters[name] = (n, row.executions, row.inferences, row.queue_us * n,
                          (row.compute_input_us + row.compute_infer_us
                           + row.compute_output_us) * n)
    return counters


def server_window(before: dict, after: dict) -> dict:
    """Per model, what the server did between two `server_counters`."""
    window = {}
    for name in after:
        requests, executions, inferences, queue, compute = (
            a - b for a, b in zip(after[name], before[name], strict=True))
        window[name] = {"requests": requests, "executions": executions,
                        "inferences": inferences,
                        "queue_us_per_request": queue / requests if requests else None,
                        "compute_us_per_request": compute / requests if requests else None,
                        "mean_batch": inferences / executions if executions else None,
                        "_queue": queue, "_compute": compute}
    return window
