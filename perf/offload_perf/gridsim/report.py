"""What a run shows: gridsim.png (events/s vs K per mode; the server's queue and compute
time vs K) and the summary printed at the end (ratios, saturation)."""

from __future__ import annotations

from pathlib import Path

from offload_perf.gridsim.choices import MODES, OFFLOADED


def plot(record: dict, path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, settings = record["rows"], record["settings"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, colour in zip(MODES, ("tab:blue", "tab:orange", "tab:green"), strict=True):
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["workers"])
        if not mine:
            continue
        ks = [r["workers"] for r in mine]
        left.plot(ks, [r["events_per_second"] for r in mine], marker="o", color=colour,
                  label=f"{mode.replace('_', '-')}: total")
        left.plot(ks, [r["events_per_second_per_worker"] for r in mine], marker="x",
                  linestyle="--", color=colour, label=f"{mode.replace('_', '-')}: per worker")
    left.set_xticks(settings_ks := sorted({r["workers"] for r in rows}))
    left.set_xlabel("worker processes K")
    left.set_ylabel("events / s")
    left.set_title(f"grid job: {settings['cpu_ms']:g} ms CPU + inference per event")
    left.legend(fontsize=8)
    served = sorted((r for r in rows if r["mode"] == "offloaded" and "server" in r),
                    key=lambda r: r["workers"])
    if served:
        ks = [r["workers"] for r in served]
        for name in settings["models"]:
            right.plot(ks, [(r["server"][name]["queue_us_per_request"] or 0) / 1e3
                            for r in served], marker="o", label=f"{name}: queue")
            right.plot(ks, [(r["server"][name]["compute_us_per_request"] or 0) / 1e3
                            for r in served], marker=".", linestyle=":",
                       label=f"{name}: compute")
        threshold = record["saturation"].get("threshold_us")
        if threshold:
            right.axhline(threshold / 1e3, color="grey", linestyle="--", linewidth=1,
                          label="queue-growth threshold")
        right.set_xticks(settings_ks)
        right.set_xlabel("worker processes K")
        right.set_ylabel("ms per request (server side)")
        right.set_title("Triton queue and compute time per request")
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def summary(record: dict) -> None:
    for ratio in record["ratios"]:
        if "offloaded_over_in_process" in ratio:
            print(f"K={ratio['workers']}: offloaded / in-process = "
                  f"{ratio['offloaded_over_in_process']:.2f}")
        for mode in OFFLOADED:
            key = f"job_model_cpu_in_process_over_{mode}"
            if key in ratio:
                print(f"K={ratio['workers']}: the models cost the job {ratio[key]:.1f}x less "
                      f"CPU per event {mode.replace('_', ' ')} than in-process")
    sat = record["saturation"]
    if sat["baseline_queue_us"] is not None:
        if sat["reached_in_sweep"]:
            print(f"server queue time grows from K={sat['first_growing_workers']} "
                  f"({sat['criterion']}); one server sustains {sat['sustained_workers']} "
                  "worker(s) here")
        else:
            print(f"server queue time did not grow within the sweep ({sat['criterion']}): "
                  f"one server sustains at least {sat['sustained_workers']} worker(s)")
