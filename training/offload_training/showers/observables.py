"""Shower observables and histogram comparisons (numpy only).

Showers are `[n, layers, radial, angular]` energies in GeV (see `geometry`). Depths are in
X0 (layer centres), radii in Molière radii (radial bin centres).
"""

from __future__ import annotations

import numpy as np

from offload_training.showers import geometry as geo


def layer_energy(showers: np.ndarray) -> np.ndarray:
    """Energy per layer, GeV: [n, layers]."""
    return showers.sum(axis=(2, 3), dtype=np.float64)


def deposited_energy(showers: np.ndarray) -> np.ndarray:
    return showers.sum(axis=(1, 2, 3), dtype=np.float64)


def response(showers: np.ndarray, incident: np.ndarray) -> np.ndarray:
    """Deposited over incident energy (containment times sampling fluctuation)."""
    return deposited_energy(showers) / np.asarray(incident, np.float64)


def _weighted_mean(weights: np.ndarray, values: np.ndarray, axis: int) -> np.ndarray:
    total = weights.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (weights * values).sum(axis=axis) / total, np.nan)


def longitudinal_centroid(showers: np.ndarray) -> np.ndarray:
    """Energy-weighted mean depth, X0 (NaN for an empty shower)."""
    return _weighted_mean(layer_energy(showers), geo.LAYER_CENTRES_X0[None, :], axis=1)


def lateral_width(showers: np.ndarray) -> np.ndarray:
    """Energy-weighted RMS radius of the whole shower, Molière radii."""
    rings = showers.sum(axis=(1, 3), dtype=np.float64)  # [n, radial]
    return np.sqrt(_weighted_mean(rings, geo.RADIAL_CENTRES_RM[None, :] ** 2, axis=1))


def lateral_width_per_layer(showers: np.ndarray) -> np.ndarray:
    """Energy-weighted RMS radius per layer, Molière radii: [n, layers] (NaN if empty)."""
    rings = showers.sum(axis=3, dtype=np.float64)  # [n, layers, radial]
    return np.sqrt(_weighted_mean(rings, geo.RADIAL_CENTRES_RM[None, None, :] ** 2, axis=2))


def hit_voxels(showers: np.ndarray) -> np.ndarray:
    return (showers > 0).reshape(len(showers), -1).sum(axis=1)


#: scalar observables, name -> (label, unit)
SCALARS = {
    "response": ("E_dep / E_inc", ""),
    "depth": ("longitudinal centroid", "X0"),
    "width": ("lateral width (RMS radius)", "R_M"),
    "hits": ("hit voxels", ""),
}


def observables(showers: np.ndarray, incident: np.ndarray) -> dict[str, np.ndarray]:
    """Every observable of a set of showers: scalars [n] and per-layer arrays [n, layers]."""
    return {
        "response": response(showers, incident),
        "depth": longitudinal_centroid(showers),
        "width": lateral_width(showers),
        "hits": hit_voxels(showers).astype(np.float64),
        "layer_energy": layer_energy(showers),
        "layer_width": lateral_width_per_layer(showers),
    }


# --- histogram comparisons ---


def histogram_bins(reference: np.ndarray, bins: int = 40, quantile: float = 0.005) -> np.ndarray:
    """Edges spanning the reference's central 1 − 2·quantile (outliers land in the edge
    bins, see `separation_power`); integer observables get integer-aligned bins."""
    values = reference[np.isfinite(reference)]
    low, high = np.quantile(values, [quantile, 1 - quantile])
    if np.all(values == np.round(values)):
        step = max(1.0, np.ceil((high - low + 1) / bins))
        return np.arange(np.floor(low) - 0.5, np.ceil(high) + step, step)
    if high <= low:
        high = low + 1e-9
    return np.linspace(low, high, bins + 1)


def normalised_histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    counts, _ = np.histogram(np.clip(finite, edges[0], edges[-1]), bins=edges)
    return counts / max(counts.sum(), 1)


def separation_power(first: np.ndarray, second: np.ndarray, edges: np.ndarray) -> float:
    """⟨S²⟩ = ½ Σ (h1 − h2)² / (h1 + h2) over unit-normalised histograms (CaloChallenge):
    0 for identical, 1 for disjoint distributions. Values outside the edges count in the
    first or last bin, NaNs are left out."""
    h1, h2 = normalised_histogram(first, edges), normalised_histogram(second, edges)
    total = h1 + h2
    used = total > 0
    return float(0.5 * np.sum((h1[used] - h2[used]) ** 2 / total[used]))


def separation_powers(reference: dict[str, np.ndarray], generated: dict[str, np.ndarray],
                      bins: int = 40) -> dict[str, float]:
    """⟨S²⟩ of every observable, binned on the reference: the scalars, each layer's energy
    and width (`layer_energy_07`, …), and their means over layers."""
    result = {}
    for name in SCALARS:
        result[name] = separation_power(reference[name], generated[name],
                                        histogram_bins(reference[name], bins))
    for name in ("layer_energy", "layer_width"):
        per_layer = []
        for layer in range(reference[name].shape[1]):
            ref, gen = reference[name][:, layer], generated[name][:, layer]
            per_layer.append(separation_power(ref, gen, histogram_bins(ref, bins)))
            result[f"{name}_{layer:02d}"] = per_layer[-1]
        result[f"{name}_mean"] = float(np.mean(per_layer))
    return result


def summary(obs: dict[str, np.ndarray]) -> dict[str, float]:
    """Means (and the RMS of the response) of the scalar observables."""
    response_values = obs["response"]
    return {
        "response_mean": float(np.mean(response_values)),
        "response_rms": float(np.std(response_values)),
        "depth_mean_X0": float(np.nanmean(obs["depth"])),
        "width_mean_RM": float(np.nanmean(obs["width"])),
        "hits_mean": float(np.mean(obs["hits"])),
    }
