"""The measurement: for each K and mode, the workers warm up, then run a timed window
together, with the server's counters and CPU read around it; a row per point."""

from __future__ import annotations

import argparse

import offload
from offload_perf.gridsim.choices import OFFLOADED
from offload_perf.gridsim.results import summarise
from offload_perf.gridsim.server_stats import process_group_cpu, server_counters, server_window
from offload_perf.gridsim.workers import Workers


def sweep(workers: Workers, ks: list[int], modes: list[str],
          served: dict[str, offload.Model], args: argparse.Namespace,
          rows: list[dict], server_pgid: int | None = None) -> None:
    """Every (K, mode) point, appended to `rows` as it is measured (kept on a failure)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    prepare_timeout = 120.0 + 10 * max(ks)  # spawn + importing TensorFlow on a busy node
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  transient=False, console=_console()) as progress:
        task = progress.add_task("grid-job simulator", total=len(ks) * len(modes))
        for k in ks:
            for mode in modes:
                progress.update(task, description=f"K={k} {mode}: warming up")
                workers.prepare(k, mode, prepare_timeout)
                before = server_counters(served) if mode in OFFLOADED else None
                cpu_before = (process_group_cpu(server_pgid)
                              if mode in OFFLOADED and server_pgid else None)
                progress.update(task, description=f"K={k} {mode}: measuring")
                results = workers.run(k, mode, args.duration, args.timeout + 30)
                window = (server_window(before, server_counters(served))
                          if mode in OFFLOADED else None)
                cpu_after = process_group_cpu(server_pgid) if cpu_before is not None else None
                server_cpu = (cpu_after - cpu_before
                              if cpu_before is not None and cpu_after is not None else None)
                row = summarise(k, mode, results, window, server_cpu)
                rows.append(row)
                queue = row.get("queue_us_per_request")
                progress.console.print(
                    f"K={k} {mode:10s} {row['events_per_second']:8.1f} events/s "
                    f"({row['events_per_second_per_worker']:.1f} per worker; reco "
                    f"{row['reco_ms_per_event']:.2f} ms + inference "
                    f"{row['inference_ms_per_event']:.2f} ms per event; job CPU "
                    f"{row['job_cpu_ms_per_event']:.3f} ms/event, of which models "
                    f"{row['job_model_cpu_us_per_event']:.0f} us)"
                    + (f"; server queue {queue:.0f} us/request" if queue is not None else "")
                    + (f"; server CPU {row['server_cpu_ms_per_event']:.3f} ms/event"
                       if row["server_cpu_ms_per_event"] is not None else ""))
                progress.advance(task)


def _console():
    from rich.console import Console

    return Console(stderr=True)
