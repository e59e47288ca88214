"""What a sweep's rows say: a row per (K, mode) from the workers' counts and the server's
window, the ratios between modes, and where the server's queue starts to grow."""

from __future__ import annotations

import numpy as np

from offload_perf.gridsim.choices import MODES, OFFLOADED

QUEUE_GROWTH = 2.0  # queue time per request above this multiple of the smallest K's ...
QUEUE_FLOOR_US = 100.0  # ... and above this floor: the server no longer keeps up


def summarise(k: int, mode: str, results: list[dict], server: dict | None,
              server_cpu_seconds: float | None = None) -> dict:
    events = sum(r["events"] for r in results)
    cpu = sum(r["cpu_seconds"] for r in results)
    busy = sum(r.get("busy_cpu_seconds", 0.0) for r in results)
    per_worker = [r["events"] / r["seconds"] for r in results]
    row = {"workers": k, "mode": mode, "events": events,
           "events_per_second": float(sum(per_worker)),
           "events_per_second_per_worker": float(np.mean(per_worker)),
           "per_worker": [round(x, 2) for x in per_worker],
           "reco_ms_per_event": 1e3 * sum(r["reco_seconds"] for r in results) / max(events, 1),
           "inference_ms_per_event": 1e3 * sum(r["inference_seconds"] for r in results)
           / max(events, 1),
           "cpu_share": float(np.mean([r["cpu_seconds"] / r["seconds"] for r in results])),
           # The job's own CPU (its workers' getrusage: every thread), per event; and the
           # part beyond the simulated reconstruction: what the models cost the job.
           "job_cpu_ms_per_event": 1e3 * cpu / max(events, 1),
           "job_model_cpu_us_per_event": 1e6 * (cpu - busy) / max(events, 1),
           "server_cpu_ms_per_event": (1e3 * server_cpu_seconds / max(events, 1)
                                       if server_cpu_seconds is not None else None)}
    if server is not None:
        requests = sum(s["requests"] for s in server.values())
        queue = sum(s.pop("_queue") for s in server.values())
        compute = sum(s.pop("_compute") for s in server.values())
        row["server"] = server
        row["queue_us_per_request"] = queue / requests if requests else None
        row["server_us_per_request"] = (queue + compute) / requests if requests else None
        row["compute_us_per_request"] = compute / requests if requests else None
    return row


def saturation(rows: list[dict]) -> dict:
    """Where the server's queue time per request starts to grow (see the package doc)."""
    served = sorted((r for r in rows if r["mode"] == "offloaded"
                     and r.get("queue_us_per_request") is not None), key=lambda r: r["workers"])
    criterion = (f"queue time per request > {QUEUE_GROWTH:g} x its value at the smallest K "
                 f"and > {QUEUE_FLOOR_US:g} us")
    if not served:
        return {"criterion": criterion, "baseline_queue_us": None,
                "first_growing_workers": None, "sustained_workers": None}
    baseline = served[0]["queue_us_per_request"]
    threshold = max(QUEUE_GROWTH * baseline, QUEUE_FLOOR_US)
    growing = next((r["workers"] for r in served if r["queue_us_per_request"] > threshold),
                   None)
    sustained = max((r["workers"] for r in served
                     if growing is None or r["workers"] < growing), default=None)
    return {"criterion": criterion, "baseline_queue_us": baseline,
            "threshold_us": threshold, "first_growing_workers": growing,
            "sustained_workers": sustained,
            "reached_in_sweep": growing is not None}


def ratios(rows: list[dict]) -> list[dict]:
    """Per K: offloaded / in-process events/s, and each mode's scaling efficiency (events/s
    at K over K x the per-worker rate at the smallest K: 1.0 = perfect scaling)."""
    by = {(r["workers"], r["mode"]): r for r in rows}
    ks = sorted({r["workers"] for r in rows})
    out = []
    for k in ks:
        entry: dict = {"workers": k}
        if (k, "in_process") in by and (k, "offloaded") in by:
            entry["offloaded_over_in_process"] = (by[k, "offloaded"]["events_per_second"]
                                                  / by[k, "in_process"]["events_per_second"])
        for mode in OFFLOADED:  # how much less CPU the models cost the job offloaded
            if (k, "in_process") in by and (k, mode) in by:
                entry[f"job_model_cpu_in_process_over_{mode}"] = (
                    by[k, "in_process"]["job_model_cpu_us_per_event"]
                    / max(by[k, mode]["job_model_cpu_us_per_event"], 1e-9))
        for mode in MODES:
            first = next((by[j, mode] for j in ks if (j, mode) in by), None)
            if (k, mode) in by and first is not None:
                entry[f"{mode}_scaling"] = (by[k, mode]["events_per_second"]
                                            / (k * first["events_per_second_per_worker"]))
        out.append(entry)
    return out
