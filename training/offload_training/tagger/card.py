"""The model card and plots of `jet_tagger`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

from offload.physics.jets import CONSTITUENT_FEATURES
from offload_training.export import BatchTiming, markdown_table, timing_table
from offload_training.plotting import pyplot


def write(model_dir: Path, metrics: dict, timings: Sequence[BatchTiming], labels: np.ndarray,
          scores: np.ndarray, history: list[dict]) -> None:
    _plots(model_dir, labels, scores, history)
    test, sample = metrics["test"], metrics["validation_sample"]
    counts = metrics["data"]["counts"]
    rows = [[name, f"{m['auc']:.4f}", f"{m['rejection_at_30']:.0f}", f"{m['rejection_at_50']:.0f}",
             f"{m['n_signal']} / {m['n_background']}"]
            for name, m in (("test split", test), ("validation.npz", sample))]
    quick = " (QUICK smoke run: not a trained model)" if metrics["data"]["quick"] else ""
    text = f"""# jet_tagger{quick}

A ParticleNet-style top tagger: tells hadronically decaying boosted top quarks (signal) from
QCD light-quark and gluon jets (background) using the jet's constituents as a particle
cloud. Served by Triton's `onnxruntime` backend from `1/model.onnx`.

## Inputs (one row per jet; batch dimension first)
Computed from reconstructed constituents by `offload.physics.jets.tagger_inputs(constituents,
jets)` (numpy only, part of the thin client), which grid jobs call before sending: the same
code made the training inputs. The 128 highest-pt constituents; the model uses the first 64.

| name | shape | type | content |
| --- | --- | --- | --- |
| `points` | [128, 2] | FP32 | (Δη, Δφ) of each constituent to the jet axis |
| `features` | [128, 13] | FP32 | {", ".join(f"`{f}`" for f in CONSTITUENT_FEATURES)} (pt and energy in GeV inside the logs) |
| `mask` | [128, 1] | FP32 | 1 for a constituent, 0 for padding |

## Output
| name | shape | type | content |
| --- | --- | --- | --- |
| `top_probability` | [1] | FP32 | sigmoid score in [0, 1]; higher = more top-like (a classifier score, calibrated only on this sample's 50/50 mix) |

## Training data
Pythia 8.317 pp collisions at √s = 13.6 TeV: hadronic tt̄ (signal: jets matched to a
hadronic top whose three decay quarks are within ΔR < 0.8) and QCD dijets; the project's
parametric detector model (`offload_training/jets/detector.py`: tracker, ECAL, HCAL with
non-compensating response; thresholds and acceptances documented there); anti-kT R = 0.8
FastJet jets with reconstructed pt in [500, 650] GeV, |η| < 2. Split by event:
train {counts['train']['top']} top / {counts['train']['qcd']} QCD, validation
{counts['validation']['top']} / {counts['validation']['qcd']}, test {counts['test']['top']} /
{counts['test']['qcd']}.

## Model and training
One EdgeConv block (k = 12 nearest neighbours in (Δη, Δφ), MLP 26→32→32 on (x_i, x_j − x_i),
mean over neighbours, linear shortcut), a per-particle layer 32→64, a masked mean over
particles, and a 64→64→1 head; {metrics['training']['parameters']:,} parameters. AdamW with a
one-cycle schedule, batch 256, {metrics['training']['epochs']} epochs
({metrics['training']['seconds'] / 60:.1f} min on {metrics['machine']['threads']} CPU
threads); the epoch with the best validation AUC is kept.

## Metrics (held-out jets)
{markdown_table(["sample", "ROC AUC", "1/ε_B at ε_S = 0.3", "1/ε_B at ε_S = 0.5", "top / QCD jets"], rows)}

`validation.npz` holds {sample['n_signal'] + sample['n_background']} test jets (raw
constituents); the tests serve them and recompute its row above.

**Against the anchors.** ParticleNet reaches AUC 0.986 (1/ε_B ≈ 1615 at ε_S = 0.3) and ParT
0.988 on the public top-tagging data set (Kasieczka et al., SciPost Phys. 7 (2019) 014:
Pythia 8 + Delphes ATLAS card, pt 550–650 GeV, 1.2 M training jets). Ours differs in: the
detector model (parametric, not Delphes), the pt window (500–650 GeV), the training size
({counts['train']['top'] + counts['train']['qcd']:,} jets, {1.2e6 / (counts['train']['top'] + counts['train']['qcd']):.0f} times fewer), and a much
smaller network (one static EdgeConv block, 64 constituents) sized for CPU training in
minutes. The figures are not directly comparable.

![ROC curve](roc.png)
![score distributions](scores.png)
![training](training.png)

## Batch size
Measured in-process with onnxruntime (as the backend runs it) on this machine
({metrics['machine']['host']}); `max_batch_size` = twice the smallest batch reaching 90 % of the
best throughput: **{metrics['export']['max_batch_size']}**. ONNX export vs torch: largest
difference {metrics['export']['onnx_vs_torch_max_abs']:.1e}.

{timing_table(timings)}

## Reproduce
`make models` (all three models) or `make models QUICK=1` (a smoke run); metrics in
`metrics.json` beside this card.
"""
    (model_dir / "model_card.md").write_text(text)
    from offload_training.targets import write_variants

    write_variants(model_dir)  # configs/<target>.pbtxt and the card's "Config variants"


def _plots(model_dir: Path, labels: np.ndarray, scores: np.ndarray, history: list[dict]) -> None:
    plt = pyplot()
    fpr, tpr, _ = roc_curve(labels, scores)
    keep = fpr > 0
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(tpr[keep], 1 / fpr[keep])
    ax.set_yscale("log")
    ax.set_xlabel("signal efficiency ε_S (top)")
    ax.set_ylabel("background rejection 1/ε_B (QCD)")
    ax.set_title("jet_tagger ROC, test split")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(model_dir / "roc.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    bins = np.linspace(0, 1, 41)
    ax.hist(scores[labels == 1], bins, histtype="step", density=True, label="top")
    ax.hist(scores[labels == 0], bins, histtype="step", density=True, label="QCD")
    ax.set_yscale("log")
    ax.set_xlabel("top_probability")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(model_dir / "scores.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("binary cross-entropy")
    other = ax.twinx()
    other.plot(epochs, [h["validation_auc"] for h in history], color="C1",
               label="validation AUC")
    other.set_ylabel("validation AUC")
    fig.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(model_dir / "training.png", dpi=100)
    plt.close(fig)
