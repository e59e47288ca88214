"""Physics metrics of the jet models, computed on held-out jets (numpy + scikit-learn)."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def tagging_metrics(is_signal: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """ROC AUC and background rejection 1/eps_B at signal efficiencies 0.3 and 0.5."""
    fpr, tpr, _ = roc_curve(is_signal, score)
    metrics = {"auc": float(roc_auc_score(is_signal, score)), "n_signal": int(is_signal.sum()),
               "n_background": int((1 - is_signal).sum())}
    for efficiency in (0.3, 0.5):
        eps_b = float(np.interp(efficiency, tpr, fpr))
        rejection = 1.0 / eps_b if eps_b > 0 else float("inf")
        metrics[f"rejection_at_{int(efficiency * 100)}"] = rejection
    return metrics


def tagging_metrics_with_errors(is_signal: np.ndarray, score: np.ndarray, *,
                                resamples: int = 200, seed: int = 0) -> dict[str, float]:
    """:func:`tagging_metrics` with statistical uncertainties: the standard deviation of each
    figure over `resamples` bootstrap replicas (signal and background jets each drawn with
    replacement, their counts kept), as ``<name>_error``. Also the background jets above the
    ε_S = 0.3 and 0.5 cuts (``background_passing_at_30``, ``_50``): a rejection's relative
    uncertainty is about 1/√(that count)."""
    is_signal = np.asarray(is_signal).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    central = tagging_metrics(is_signal, score)
    signal, background = score[is_signal], score[~is_signal]
    for efficiency in (0.3, 0.5):
        cut = np.quantile(signal, 1 - efficiency)
        central[f"background_passing_at_{int(efficiency * 100)}"] = int((background > cut).sum())
    rng = np.random.default_rng(seed)
    keys = ("auc", "rejection_at_30", "rejection_at_50")
    replicas: dict[str, list[float]] = {key: [] for key in keys}
    labels = np.concatenate([np.ones(len(signal), bool), np.zeros(len(background), bool)])
    for _ in range(resamples):
        drawn = np.concatenate([rng.choice(signal, len(signal)),
                                rng.choice(background, len(background))])
        again = tagging_metrics(labels, drawn)
        for key in keys:
            replicas[key].append(again[key])
    for key in keys:
        values = np.asarray(replicas[key])
        finite = values[np.isfinite(values)]
        central[f"{key}_error"] = float(finite.std()) if len(finite) > 1 else float("nan")
    central["resamples"] = resamples
    return central


def response_and_resolution(ratio: np.ndarray) -> dict[str, float]:
    """Median response and resolution (half the 16–84 % interval over the median)."""
    q16, median, q84 = np.quantile(ratio, [0.16, 0.5, 0.84])
    return {"response": float(median), "resolution": float((q84 - q16) / 2 / median),
            "n": len(ratio)}


#: Bins of the regression's report: generator-level jet pt [GeV] and |eta|.
PT_BINS = (500.0, 550.0, 600.0, 650.0)
ETA_BINS = (0.0, 1.0, 2.0)


def regression_metrics(pt_reco: np.ndarray, pt_corrected: np.ndarray, pt_gen: np.ndarray,
                       eta_gen: np.ndarray) -> dict:
    """Response and resolution of corrected and uncorrected jets, inclusive (gen pt in
    [500, 650] GeV) and per (pt, |eta|) bin."""
    def summary(keep: np.ndarray) -> dict:
        return {"uncorrected": response_and_resolution(pt_reco[keep] / pt_gen[keep]),
                "corrected": response_and_resolution(pt_corrected[keep] / pt_gen[keep])}

    inclusive = (pt_gen >= PT_BINS[0]) & (pt_gen < PT_BINS[-1])
    result = {"inclusive": summary(inclusive), "bins": []}
    for pt_low, pt_high in pairwise(PT_BINS):
        for eta_low, eta_high in pairwise(ETA_BINS):
            keep = ((pt_gen >= pt_low) & (pt_gen < pt_high) & (np.abs(eta_gen) >= eta_low)
                    & (np.abs(eta_gen) < eta_high))
            if keep.sum() >= 20:
                result["bins"].append({"pt": [pt_low, pt_high], "abs_eta": [eta_low, eta_high],
                                       **summary(keep)})
    unc, cor = result["inclusive"]["uncorrected"], result["inclusive"]["corrected"]
    result["resolution_improvement"] = 1.0 - cor["resolution"] / unc["resolution"]
    return result
