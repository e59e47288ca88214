"""Plots for the model card: generated vs reference, with ratio panels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from offload_training.showers import geometry as geo
from offload_training.showers import observables as obs

REFERENCE_STYLE = {"color": "black", "label": "GFlash reference"}
GENERATED_STYLE = {"color": "tab:red", "label": "VAE generator"}


def _figure(rows: int, columns: int, size: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    figure = plt.figure(figsize=size)
    outer = GridSpec(rows, columns, figure=figure, hspace=0.3, wspace=0.3)
    panels = []
    for r in range(rows):
        for c in range(columns):
            inner = outer[r, c].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.06)
            main = figure.add_subplot(inner[0])
            ratio = figure.add_subplot(inner[1], sharex=main)
            main.tick_params(labelbottom=False)
            panels.append((main, ratio))
    return figure, panels


def _ratio(ax, x, numerator, denominator, step: bool) -> None:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(denominator > 0, numerator / denominator, np.nan)
    if step:
        ax.stairs(r, x, color=GENERATED_STYLE["color"])
    else:
        ax.plot(x, r, "o-", color=GENERATED_STYLE["color"], ms=3)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_ylim(0.8, 1.2)
    ax.set_ylabel("gen / ref", fontsize=8)


def _histogram(panel, reference: np.ndarray, generated: np.ndarray, edges: np.ndarray,
               xlabel: str, separation: float, log: bool = False) -> None:
    main, ratio = panel
    h_ref = obs.normalised_histogram(reference, edges)
    h_gen = obs.normalised_histogram(generated, edges)
    main.stairs(h_ref, edges, lw=1.5, **REFERENCE_STYLE)
    main.stairs(h_gen, edges, lw=1.2, ls="--", **GENERATED_STYLE)
    main.set_ylabel("fraction of showers", fontsize=8)
    main.text(0.97, 0.95, f"⟨S²⟩ = {separation:.4f}", transform=main.transAxes,
              ha="right", va="top", fontsize=8)
    if log:
        main.set_yscale("log")
    main.legend(fontsize=7, loc="upper left")
    _ratio(ratio, edges, h_gen, h_ref, step=True)
    ratio.set_xlabel(xlabel)


def _profile(panel, x: np.ndarray, reference: np.ndarray, generated: np.ndarray,
             xlabel: str, ylabel: str) -> None:
    main, ratio = panel
    main.plot(x, reference, "o-", ms=3, **REFERENCE_STYLE)
    main.plot(x, generated, "s--", ms=3, **GENERATED_STYLE)
    main.set_yscale("log")
    main.set_ylabel(ylabel, fontsize=8)
    main.legend(fontsize=7)
    _ratio(ratio, x, generated, reference, step=False)
    ratio.set_xlabel(xlabel)


def observables_figure(path: Path, reference_showers: np.ndarray, generated_showers: np.ndarray,
                       ref: dict[str, np.ndarray], gen: dict[str, np.ndarray],
                       separation: dict[str, float], incident: np.ndarray) -> None:
    """Six panels: E_dep/E_inc, depth, width, hit voxels, mean longitudinal and radial
    profiles (energy per layer and per radial bin, as fractions of E_inc)."""
    import matplotlib.pyplot as plt

    figure, panels = _figure(2, 3, (15, 8.5))
    for panel, name in zip(panels[:4], obs.SCALARS, strict=True):
        label, unit = obs.SCALARS[name]
        _histogram(panel, ref[name], gen[name], obs.histogram_bins(ref[name]),
                   f"{label} [{unit}]" if unit else label, separation[name])
    e = np.asarray(incident, np.float64)[:, None]
    _profile(panels[4], geo.LAYER_CENTRES_X0, (ref["layer_energy"] / e).mean(0),
             (gen["layer_energy"] / e).mean(0), "depth (layer centre) [X0]",
             "mean E_layer / E_inc")
    radial_ref = (reference_showers.sum(axis=(1, 3)) / e).mean(0)
    radial_gen = (generated_showers.sum(axis=(1, 3)) / e).mean(0)
    _profile(panels[5], geo.RADIAL_CENTRES_RM, radial_ref, radial_gen,
             "radius (bin centre) [R_M]", "mean E_radial bin / E_inc")
    figure.suptitle(f"calo_shower_generator vs GFlash reference: {len(incident):,} held-out "
                    "showers, 1–100 GeV e⁻ in PbWO4")
    figure.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(figure)


def energy_dependence_figure(path: Path, rows: list[dict]) -> None:
    """Response and resolution against incident energy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centre = np.array([np.sqrt(r["E_low_GeV"] * r["E_high_GeV"]) for r in rows])
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label, style, marker, offset in (("reference", REFERENCE_STYLE, "o-", 0.98),
                                         ("generated", GENERATED_STYLE, "s--", 1.02)):
        left.errorbar(centre * offset, [r[f"{label}_response_mean"] for r in rows],
                      yerr=[r[f"{label}_response_mean_error"] for r in rows], fmt=marker,
                      ms=4, capsize=2, **style)
        right.plot(centre, [r[f"{label}_resolution"] for r in rows], marker, **style)
    grid = np.geomspace(*geo.ENERGY_RANGE_GEV, 50)
    right.plot(grid, 0.10 / np.sqrt(grid), ":", color="grey", label="10 %/√E (spots only)")
    ticks = [1, 2, 5, 10, 20, 50, 100]
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xticks([], minor=True)
        ax.set_xlabel("incident energy [GeV]")
        ax.legend(fontsize=8)
    left.set_ylabel("mean E_dep / E_inc (± stat. error)")
    right.set_ylabel("RMS / mean of E_dep / E_inc")
    right.set_yscale("log")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def training_figure(path: Path, history: list[dict], best_epoch: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    figure, axes = plt.subplots(1, 3, figsize=(14, 3.5))
    series = (("train_loss", "training set, running mean over the epoch"),
              ("monitor_neg_elbo", "monitoring split"), ("monitor_kl", "monitoring split: KL"))
    for ax, (key, title) in zip(axes, series, strict=True):
        values = [h[key] for h in history]
        ax.plot(epochs, values, "o-", ms=3)
        if len(values) > 3:  # zoom past the first epoch, which is off the scale
            low, high = min(values[1:]), max(values[1:])
            pad = 0.1 * (high - low) + 1e-9
            ax.set_ylim(low - pad, high + pad)
        ax.axvline(best_epoch, color="grey", ls=":", label=f"kept: epoch {best_epoch}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("−ELBO per shower (nats, without log x!)")
    axes[2].set_ylabel("KL per shower (nats)")
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
