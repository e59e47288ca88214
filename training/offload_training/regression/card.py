"""The model card and plots of `jet_energy_regression`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from offload.physics.jets import CONSTITUENT_FEATURES, JET_FEATURES
from offload_training.card_sections import raw_jet_inputs
from offload_training.export import MAX_BATCH_RULE, BatchTiming, markdown_table, timing_table
from offload_training.jet_samples import JetSample
from offload_training.metrics import PT_BINS
from offload_training.plotting import pyplot


def write(model_dir: Path, metrics: dict, timings: Sequence[BatchTiming], test: JetSample,
          correction: np.ndarray, history: list[dict]) -> None:
    _plots(model_dir, metrics, test, correction, history)
    inclusive = metrics["test"]["inclusive"]
    rows = [[f"{b['pt'][0]:.0f}–{b['pt'][1]:.0f}", f"{b['abs_eta'][0]:.0f}–{b['abs_eta'][1]:.0f}",
             f"{b['uncorrected']['response']:.4f}", f"{b['corrected']['response']:.4f}",
             f"{b['uncorrected']['resolution']:.4f}", f"{b['corrected']['resolution']:.4f}",
             f"{1 - b['corrected']['resolution'] / b['uncorrected']['resolution']:.1%}",
             b["corrected"]["n"]] for b in metrics["test"]["bins"]]
    rows.insert(0, ["500–650", "0–2", f"{inclusive['uncorrected']['response']:.4f}",
                    f"{inclusive['corrected']['response']:.4f}",
                    f"{inclusive['uncorrected']['resolution']:.4f}",
                    f"{inclusive['corrected']['resolution']:.4f}",
                    f"{metrics['test']['resolution_improvement']:.1%}",
                    inclusive["corrected"]["n"]])
    sample = metrics["validation_sample"]
    counts = metrics["data"]["counts"]
    quick = " (QUICK smoke run: not a trained model)" if metrics["data"]["quick"] else ""
    text = f"""# jet_energy_regression{quick}

Corrects the transverse momentum of reconstructed large-radius (anti-kT R = 0.8) jets to the
generator level: a Deep-Sets network over the constituents plus jet-level features.
Served by Triton's `tensorflow` backend from the SavedModel `1/model.savedmodel/`
(signature `serving_default`). Multiply the reconstructed jet pt by `pt_correction`.

## Inputs (one row per jet)
Computed by `offload.physics.jets.regression_inputs(constituents, jets)` (numpy, thin client),
the same code that made the training inputs.

| name | shape | type | content |
| --- | --- | --- | --- |
| `jet` | [9] | FP32 | {", ".join(f"`{f}`" for f in JET_FEATURES)} (pt in GeV) |
| `features` | [128, 13] | FP32 | per constituent: {", ".join(f"`{f}`" for f in CONSTITUENT_FEATURES)} |
| `mask` | [128, 1] | FP32 | 1 for a constituent, 0 for padding |

{raw_jet_inputs("regression_inputs")}
## Output
| name | shape | type | content |
| --- | --- | --- | --- |
| `pt_correction` | [1] | FP32 | multiplicative correction: pt_corrected = pt_reco × pt_correction |

## Training data
The jets of `jet_tagger`'s samples (Pythia 8.317, √s = 13.6 TeV, tt̄ and QCD dijets, the
parametric detector of `offload_training/jets/detector.py` — tracks with 95 % efficiency,
ECAL, and an HCAL with non-compensating, energy-dependent response), reconstructed jets with
pt > 400 GeV and |η| < 2 matched to a generator-level jet (stable visible particles,
neutrinos excluded) within ΔR < 0.4. Target: ln(pt_gen / pt_reco). Split by event: train
{counts['train']['top'] + counts['train']['qcd']:,}, validation
{counts['validation']['top'] + counts['validation']['qcd']:,}, test
{counts['test']['top'] + counts['test']['qcd']:,} jets (both samples).

## Model and training
Per-constituent MLP 13→64→64 (standardised inputs, masked), summed over constituents (/50),
concatenated with the standardised jet features, then 128→64→1; {metrics['training']['parameters']:,}
parameters. Adam (lr 1e-3, halved on plateaus), L1 loss (so the median response is the
target), early stopping on the validation loss: {metrics['training']['epochs']} epochs,
{metrics['training']['seconds'] / 60:.1f} min on this machine's CPU.

## Metrics (test split; bins in generator-level pt [GeV] and |η|)
Response = median of pt/pt_gen; resolution = half the 16–84 % interval of pt/pt_gen over
its median. Targets: resolution ≥ 20 % better than uncorrected, response within 1 % of unity.

{markdown_table(["pt_gen", "abs η", "response raw", "response corrected", "resolution raw", "resolution corrected", "improvement", "jets"], rows)}

Validation sample (`validation.npz`, {sample['corrected']['n']} test jets with pt_gen in
[500, 650] GeV): response {sample['uncorrected']['response']:.4f} → {sample['corrected']['response']:.4f},
resolution {sample['uncorrected']['resolution']:.4f} → {sample['corrected']['resolution']:.4f};
the tests serve it and recompute these.

![response](response.png)
![resolution per bin](resolution.png)
![training](training.png)

## Batch size
Measured in-process with TensorFlow (as the backend runs it) on {metrics['machine']['host']};
`max_batch_size` = {MAX_BATCH_RULE}:
**{metrics['export']['max_batch_size']}**. SavedModel vs Keras: largest difference
{metrics['export']['savedmodel_vs_keras_max_abs']:.1e}.

{timing_table(timings)}

## Limitations
Trained on 13.6 TeV Pythia jets above 400 GeV with this project's parametric detector: the
correction is as good as that detector is like yours. No pile-up. Jets far outside
400–800 GeV are extrapolation.

## Reproduce
`make models` or `make models QUICK=1`; metrics in `metrics.json` beside this card.
"""
    (model_dir / "model_card.md").write_text(text)
    from offload_training.targets import write_variants

    write_variants(model_dir)  # configs/<target>.pbtxt and the card's "Config variants"


def _plots(model_dir: Path, metrics: dict, test: JetSample, correction: np.ndarray,
           history: list[dict]) -> None:
    plt = pyplot()
    pt_reco, pt_gen = test.reco_jet[:, 0], test.gen_jet[:, 0]
    window = (pt_gen >= PT_BINS[0]) & (pt_gen < PT_BINS[-1])
    fig, ax = plt.subplots(figsize=(5, 4))
    bins = np.linspace(0.6, 1.3, 71)
    ax.hist((pt_reco / pt_gen)[window], bins, histtype="step", label="uncorrected")
    ax.hist((pt_reco * correction / pt_gen)[window], bins, histtype="step", label="corrected")
    ax.set_xlabel("pt / pt_gen (pt_gen in 500–650 GeV)")
    ax.set_ylabel("jets")
    ax.legend()
    fig.tight_layout()
    fig.savefig(model_dir / "response.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [f"{b['pt'][0]:.0f}-{b['pt'][1]:.0f}\n|η| {b['abs_eta'][0]:.0f}-{b['abs_eta'][1]:.0f}"
              for b in metrics["test"]["bins"]]
    x = np.arange(len(labels))
    ax.bar(x - 0.2, [b["uncorrected"]["resolution"] for b in metrics["test"]["bins"]], 0.4,
           label="uncorrected")
    ax.bar(x + 0.2, [b["corrected"]["resolution"] for b in metrics["test"]["bins"]], 0.4,
           label="corrected")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("resolution (half 16–84 % / median)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(model_dir / "resolution.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([h["epoch"] for h in history], [h["train_loss"] for h in history], label="training")
    ax.plot([h["epoch"] for h in history], [h["validation_loss"] for h in history],
            label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("L1 loss on ln(pt_gen / pt_reco)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(model_dir / "training.png", dpi=100)
    plt.close(fig)
