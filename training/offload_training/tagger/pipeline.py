"""`jet_tagger`: train the ParticleNet-style top tagger, export it to ONNX, document it."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from offload.physics.jets import (
    CONSTITUENT_FEATURES,
    MAX_CONSTITUENTS,
    tagger_inputs,
)
from offload_training import jet_samples
from offload_training.export import Tensor, configure_by_measurement, model_folder, write_json
from offload_training.metrics import tagging_metrics
from offload_training.tagger import card
from offload_training.tagger.model import ParticleNetLite, TopProbability

NAME = "jet_tagger"
INPUTS = (
    Tensor("points", "TYPE_FP32", (MAX_CONSTITUENTS, 2)),
    Tensor("features", "TYPE_FP32", (MAX_CONSTITUENTS, len(CONSTITUENT_FEATURES))),
    Tensor("mask", "TYPE_FP32", (MAX_CONSTITUENTS, 1)),
)
OUTPUTS = (Tensor("top_probability", "TYPE_FP32", (1,)),)
#: Jets kept in the committed validation sample (it must stay under 2 MB).
VALIDATION_JETS = 1000


def _as_tensors(inputs: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(inputs[t.name]) for t in INPUTS)


def _predict(model: torch.nn.Module, inputs: dict[str, np.ndarray],
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
    progress = tqdm(range(epochs), desc="jet_tagger", unit="epoch")
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
        val_auc = tagging_metrics(val_labels, _predict(model, val_inputs))["auc"]
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
    example = tuple(torch.zeros((2, *t.dims)) for t in INPUTS)
    torch.onnx.export(TopProbability(model).eval(), example, str(path),
                      input_names=[t.name for t in INPUTS],
                      output_names=[t.name for t in OUTPUTS],
                      dynamic_axes={t.name: {0: "batch"} for t in (*INPUTS, *OUTPUTS)},
                      opset_version=17, dynamo=False)


def build(repository: Path, *, quick: bool = False, workers: int | None = None,
          seed: int = 0) -> dict:
    """Generate (or load) the jets, train, export into `repository/jet_tagger`, write the
    metrics, plots, validation sample and model card. Returns the metrics."""
    started = time.perf_counter()
    jets = jet_samples.load(quick=quick, workers=workers)
    jets = jets.select(jet_samples.tagging_window(jets))
    parts = {name: jets.part(name) for name in ("train", "validation", "test")}
    inputs = {name: tagger_inputs(p.constituents, p.reco_jet) for name, p in parts.items()}
    train_started = time.perf_counter()
    model, history = train(inputs["train"], parts["train"].is_top, inputs["validation"],
                           parts["validation"].is_top, epochs=1 if quick else 20, seed=seed)
    training_seconds = time.perf_counter() - train_started

    model_dir = repository / NAME
    artifact = model_folder(repository, NAME) / "model.onnx"
    export_onnx(model, artifact)
    test_scores = _predict(model, inputs["test"])
    runner, timings, max_batch = configure_by_measurement(model_dir, "onnxruntime", INPUTS,
                                                          OUTPUTS, inputs["test"])
    served_like = runner.run({k: v[:256] for k, v in inputs["test"].items()})["top_probability"]
    export_difference = float(np.abs(served_like[:, 0] - test_scores[:256]).max())
    if export_difference > 1e-4:
        raise RuntimeError(f"ONNX export differs from torch by {export_difference:.2g}")

    validation = parts["test"].select(_balanced(parts["test"].is_top, VALIDATION_JETS, seed))
    jet_samples.save_sample(model_dir / "validation.npz", validation, "constituents",
                            "reco_jet", "is_top")
    validation_scores = runner.run(tagger_inputs(validation.constituents,
                                                 validation.reco_jet))["top_probability"][:, 0]
    metrics = {
        "model": NAME,
        "test": tagging_metrics(parts["test"].is_top, test_scores),
        "validation_sample": tagging_metrics(validation.is_top, validation_scores),
        "data": {"quick": quick, "selection": "reco jet pt in [500, 650] GeV, |eta| < 2",
                 "counts": jets.counts()},
        "training": {"epochs": len(history), "history": history, "seconds": training_seconds,
                     "parameters": sum(p.numel() for p in model.parameters())},
        "export": {"max_batch_size": max_batch, "onnx_vs_torch_max_abs": export_difference,
                   "timings": [{"batch": t.batch, "ms_per_batch": t.seconds_per_batch * 1e3}
                               for t in timings]},
        "machine": {"host": platform.node(), "processor": platform.processor() or "unknown",
                    "threads": torch.get_num_threads()},
        "seconds_total": time.perf_counter() - started,
    }
    write_json(model_dir / "metrics.json", metrics)
    card.write(model_dir, metrics, timings, parts["test"].is_top, test_scores, history)
    return metrics


def _balanced(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of up to n/2 signal and n/2 background entries, fixed by the seed."""
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == value))[: n // 2] for value in (1, 0)]
    return np.sort(np.concatenate(chosen))
