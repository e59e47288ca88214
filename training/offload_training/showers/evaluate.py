"""Generated against reference showers on held-out data: observables, separation powers, a
classifier two-sample test, and speed."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import numpy as np

from offload_training.showers import geometry as geo
from offload_training.showers import observables as obs
from offload_training.showers.generator import draw_noise


def generate(module: Callable, energy: np.ndarray, seed: int, *, latent: int,
             batch: int = 4096) -> np.ndarray:
    """Showers from the serving module (TorchScript, in process) for the given incident
    energies, with the noise contract's `draw_noise(len(energy), seed)`."""
    import torch

    z, u = draw_noise(len(energy), seed, latent)
    e = np.asarray(energy, np.float32).reshape(-1, 1)
    out = np.empty((len(e), *geo.SHAPE), np.float32)
    with torch.inference_mode():
        for i in range(0, len(e), batch):
            part = slice(i, i + batch)
            out[part] = module(torch.from_numpy(e[part]), torch.from_numpy(z[part]),
                               torch.from_numpy(u[part])).numpy()
    return out


# --- classifier two-sample test ---


def low_level_features(showers: np.ndarray, incident: np.ndarray) -> np.ndarray:
    """log10 of each voxel's energy over the incident energy (+10⁻⁵, below one 10 MeV spot
    at 100 GeV), and log10 E_inc: [n, 577]."""
    e = np.asarray(incident, np.float64)
    voxels = np.log10(showers.reshape(len(showers), -1) / e[:, None] + 1e-5)
    return np.hstack([voxels, np.log10(e)[:, None]]).astype(np.float32)


def high_level_features(showers: np.ndarray, incident: np.ndarray) -> np.ndarray:
    """log10 E_inc, E_dep/E_inc, layer energy fractions, depth, width, per-layer widths,
    hit voxels: [n, 29] (NaN for empty layers; the classifier handles NaN)."""
    o = obs.observables(showers, incident)
    e = np.asarray(incident, np.float64)
    fractions = o["layer_energy"] / e[:, None]
    return np.hstack([np.log10(e)[:, None], o["response"][:, None], fractions,
                      o["depth"][:, None], o["width"][:, None], o["layer_width"],
                      o["hits"][:, None]]).astype(np.float32)


def classifier_auc(reference: np.ndarray, generated: np.ndarray, seed: int = 0,
                   max_iter: int = 300) -> dict:
    """ROC AUC of a gradient-boosted classifier separating reference (label 1) from
    generated (label 0) feature rows, trained on half of the rows and evaluated on the
    other half. 0.5: indistinguishable; 1: fully separable."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    x = np.vstack([reference, generated])
    y = np.concatenate([np.ones(len(reference)), np.zeros(len(generated))])
    order = np.random.default_rng(seed).permutation(len(x))
    half = len(x) // 2
    fit, held = order[:half], order[half:]
    classifier = HistGradientBoostingClassifier(max_iter=max_iter, learning_rate=0.1,
                                                early_stopping=True, validation_fraction=0.15,
                                                n_iter_no_change=20, random_state=seed)
    start = time.perf_counter()
    classifier.fit(x[fit], y[fit])
    auc = roc_auc_score(y[held], classifier.predict_proba(x[held])[:, 1])
    return {"auc": float(auc), "n_fit": len(fit), "n_evaluated": len(held),
            "features": int(x.shape[1]), "iterations": int(classifier.n_iter_),
            "seconds": time.perf_counter() - start}


def classifier_tests(reference: np.ndarray, reference_energy: np.ndarray, other: np.ndarray,
                     other_energy: np.ndarray, seed: int = 0, max_iter: int = 300) -> dict:
    """`classifier_auc` on low-level and on high-level features."""
    return {
        "low_level": classifier_auc(low_level_features(reference, reference_energy),
                                    low_level_features(other, other_energy), seed, max_iter),
        "high_level": classifier_auc(high_level_features(reference, reference_energy),
                                     high_level_features(other, other_energy), seed, max_iter),
    }


# --- comparisons ---


def energy_bins_summary(ref: dict[str, np.ndarray], gen: dict[str, np.ndarray],
                        incident: np.ndarray, edges: np.ndarray) -> list[dict]:
    """Response mean and relative resolution (RMS/mean) in bins of incident energy."""
    rows = []
    for low, high in itertools.pairwise(edges):
        inside = (incident >= low) & (incident < high)
        if inside.sum() < 10:
            continue
        row = {"E_low_GeV": float(low), "E_high_GeV": float(high), "n": int(inside.sum())}
        for label, o in (("reference", ref), ("generated", gen)):
            r = o["response"][inside]
            row[f"{label}_response_mean"] = float(r.mean())
            row[f"{label}_response_mean_error"] = float(r.std() / np.sqrt(len(r)))
            row[f"{label}_resolution"] = float(r.std() / r.mean())
        rows.append(row)
    return rows


def compare(reference_showers: np.ndarray, generated_showers: np.ndarray,
            incident: np.ndarray) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Summaries and separation powers of generated vs reference showers at the same
    incident energies. Returns the metrics and both observable sets (for plots)."""
    ref = obs.observables(reference_showers, incident)
    gen = obs.observables(generated_showers, incident)
    metrics = {
        "reference": obs.summary(ref),
        "generated": obs.summary(gen),
        "separation_power": obs.separation_powers(ref, gen),
    }
    return metrics, ref, gen


def time_reference(energy: np.ndarray, method: str, seed: int = 0) -> float:
    """Seconds per shower of the reference simulation (one process), at these energies."""
    from offload_training.showers.gflash import simulate

    rng = np.random.default_rng(seed)
    simulate(energy[:100], rng, method=method)  # warm-up
    start = time.perf_counter()
    simulate(energy, rng, method=method)
    return (time.perf_counter() - start) / len(energy)


def validation_metrics(reference: dict[str, np.ndarray], generated_showers: np.ndarray,
                       incident: np.ndarray) -> dict:
    """What `metrics.json["validation_sample"]` records, from generated showers (the served
    model's outputs) and the stored reference observables of the same sample: cheap and
    deterministic, so a test can recompute it from served outputs."""
    gen = obs.observables(generated_showers, incident)
    return {
        "n": len(incident),
        "generated": obs.summary(gen),
        "reference": obs.summary(reference),
        "separation_power": obs.separation_powers(reference, gen),
    }
