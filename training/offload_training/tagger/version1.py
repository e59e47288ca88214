"""`jet_tagger` version 1: the compact ParticleNet-style tagger (one static EdgeConv block)
on the first 60,000 jets of each sample (:mod:`offload_training.jet_samples`)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from offload.physics.jets import tagger_inputs
from offload_training import jet_samples
from offload_training.metrics import tagging_metrics
from offload_training.tagger import model as tagger_model
from offload_training.tagger.interface import INPUTS
from offload_training.tagger.model import ParticleNetLite

EPOCHS = 20


def _as_tensors(inputs: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(inputs[t.name]) for t in INPUTS)


def predict(model: torch.nn.Module, inputs: dict[str, np.ndarray],
            batch: int = 1024) -> np.ndarray:
    model.eval()
    tensors = _as_tensors(inputs)
    with torch.inference_mode():
        return np.concatenate([torch.sigmoid(model(*(t[i:i + batch] for t in tensors))).numpy()
                               for i in range(0, len(tensors[0]), batch)])[:, 0]


def train(train_inputs: dict[str, np.ndarray], train_labels: np.ndarray,
          val_inputs: dict[str, np.ndarray], val_labels: np.ndarray, *, epochs: int,
          seed: int, batch_size: int = 256) -> tuple[ParticleNetLite, list[dict]]:
    torch.manual_seed(seed)
    model = ParticleNetLite()
    tensors = _as_tensors(train_inputs)
    model.fit_standardisation(tensors[1], tensors[2])
    labels = torch.from_numpy(train_labels.astype(np.float32))[:, None]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(labels) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    history, best_auc, best_state = [], -1.0, None
    progress = tqdm(range(epochs), desc="jet_tagger v1", unit="epoch")
    for epoch in progress:
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        losses = []
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            logits = model(*(t[index] for t in tensors))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        val_auc = tagging_metrics(val_labels, predict(model, val_inputs))["auc"]
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                        "validation_auc": val_auc})
        progress.set_postfix(loss=f"{np.mean(losses):.4f}", val_auc=f"{val_auc:.4f}")
        if val_auc > best_auc:  # keep the epoch that did best on the validation split
            best_auc = val_auc
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    return model.eval(), history


def export_onnx(model: ParticleNetLite, path: Path) -> None:
    tagger_model.export_onnx(model, path)


def build(artifact: Path, *, quick: bool = False, workers: int | None = None,
          seed: int = 0) -> tuple[dict, ParticleNetLite, dict[str, np.ndarray]]:
    """Train version 1 on its own jets and export it to `artifact`. Returns its record
    (data, training), the model and its own test split's inputs and labels."""
    jets = jet_samples.load(quick=quick, workers=workers)
    jets = jets.select(jet_samples.tagging_window(jets))
    parts = {name: jets.part(name) for name in ("train", "validation", "test")}
    inputs = {name: tagger_inputs(p.constituents, p.reco_jet) for name, p in parts.items()}
    started = time.perf_counter()
    model, history = train(inputs["train"], parts["train"].is_top, inputs["validation"],
                           parts["validation"].is_top, epochs=1 if quick else EPOCHS,
                           seed=seed)
    seconds = time.perf_counter() - started
    export_onnx(model, artifact)
    own_test = tagging_metrics(parts["test"].is_top, predict(model, inputs["test"]))
    record = {
        "architecture": "one EdgeConv block (k = 12 nearest neighbours in (Δη, Δφ), MLP "
                        "26→32→32 on (x_i, x_j − x_i), mean over neighbours, linear "
                        "shortcut), a per-particle layer 32→64, a masked mean over "
                        "particles, a 64→64→1 head; 64 constituents",
        "data": {"selection": "reco jet pt in [500, 650] GeV, |eta| < 2",
                 "samples": {s: {"jets": jet_samples.QUICK_JETS if quick
                                 else jet_samples.FULL_JETS, "seed": seed_}
                             for s, seed_ in jet_samples.SEEDS.items()},
                 "counts": jets.counts()},
        "training": {"epochs": len(history), "history": history, "seconds": seconds,
                     "threads": torch.get_num_threads(),
                     "parameters": sum(p.numel() for p in model.parameters()),
                     "batch_size": 256, "optimizer": "AdamW, one-cycle, max lr 3e-3"},
        "own_test_split": own_test,
    }
    return record, model, {**inputs["test"], "is_top": parts["test"].is_top}
