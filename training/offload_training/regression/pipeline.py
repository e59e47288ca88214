"""`jet_energy_regression`: a Keras Deep-Sets regression of the jet pt correction,
exported as a TensorFlow SavedModel.

The network sees the jet's constituents (a per-constituent MLP summed over the jet, as in
Deep Sets / Energy Flow Networks) beside jet-level features, and predicts
ln(pt_gen / pt_reco) with an L1 loss, so that the median corrected response is 1. The
served output is the multiplicative correction `pt_correction` = exp(prediction).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from offload.physics.jets import (
    CONSTITUENT_FEATURES,
    JET_FEATURES,
    MAX_CONSTITUENTS,
    regression_inputs,
)
from offload_training import jet_samples
from offload_training.export import Tensor, configure_by_measurement, model_folder, write_json
from offload_training.metrics import regression_metrics
from offload_training.regression import card

NAME = "jet_energy_regression"
INPUTS = (
    Tensor("jet", "TYPE_FP32", (len(JET_FEATURES),)),
    Tensor("features", "TYPE_FP32", (MAX_CONSTITUENTS, len(CONSTITUENT_FEATURES))),
    Tensor("mask", "TYPE_FP32", (MAX_CONSTITUENTS, 1)),
)
OUTPUTS = (Tensor("pt_correction", "TYPE_FP32", (1,)),)
VALIDATION_JETS = 1000


def build_model(train: dict[str, np.ndarray], seed: int):
    import keras
    from keras import layers, ops

    keras.utils.set_random_seed(seed)
    jet = keras.Input((len(JET_FEATURES),), name="jet")
    features = keras.Input((MAX_CONSTITUENTS, len(CONSTITUENT_FEATURES)), name="features")
    mask = keras.Input((MAX_CONSTITUENTS, 1), name="mask")
    # Standardisation fitted on the training set's real constituents and jets.
    real = train["features"][train["mask"][..., 0] > 0]
    constituent_norm = layers.Normalization(mean=real.mean(0), variance=real.var(0) + 1e-6)
    jet_norm = layers.Normalization(mean=train["jet"].mean(0), variance=train["jet"].var(0) + 1e-6)
    x = constituent_norm(features) * mask
    for width in (64, 64):
        x = layers.Dense(width, activation="relu")(x)
    x = x * mask
    pooled = ops.sum(x, axis=1) / 50.0  # sum over constituents: energy-flow-like
    h = layers.Concatenate()([pooled, jet_norm(jet)])
    for width in (128, 64):
        h = layers.Dense(width, activation="relu")(h)
    log_correction = layers.Dense(1, name="log_correction")(h)
    return keras.Model([jet, features, mask], log_correction)


def export_savedmodel(model, path: Path) -> None:
    """A SavedModel whose `serving_default` signature takes jet, features, mask and returns
    `pt_correction` = exp(log correction)."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    specs = [tf.TensorSpec([None, *t.dims], tf.float32, name=t.name) for t in INPUTS]

    def serve(jet, features, mask):
        return {"pt_correction": tf.exp(model([jet, features, mask], training=False))}

    archive.add_endpoint(name="serving_default", fn=serve, input_signature=specs)
    archive.write_out(str(path), verbose=False)


def _arrays(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [inputs[t.name] for t in INPUTS]


def build(repository: Path, *, quick: bool = False, workers: int | None = None,
          seed: int = 0) -> dict:
    """Load the jets, train, export into `repository/jet_energy_regression`, write metrics,
    plots, validation sample and model card. Returns the metrics."""
    import keras

    started = time.perf_counter()
    jets = jet_samples.load(quick=quick, workers=workers)
    parts = {name: jets.part(name) for name in ("train", "validation", "test")}
    inputs = {name: regression_inputs(p.constituents, p.reco_jet) for name, p in parts.items()}
    targets = {name: np.log(p.gen_jet[:, :1] / p.reco_jet[:, :1]) for name, p in parts.items()}

    model = build_model(inputs["train"], seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss="mean_absolute_error")
    epochs = 1 if quick else 40
    train_started = time.perf_counter()
    fit = model.fit(_arrays(inputs["train"]), targets["train"], batch_size=256, epochs=epochs,
                    validation_data=(_arrays(inputs["validation"]), targets["validation"]),
                    callbacks=[keras.callbacks.EarlyStopping(patience=6, restore_best_weights=True),
                               keras.callbacks.ReduceLROnPlateau(patience=3, factor=0.5)],
                    verbose=2 if quick else 1)
    training_seconds = time.perf_counter() - train_started
    history = [{"epoch": i + 1, "train_loss": float(loss), "validation_loss": float(val)}
               for i, (loss, val) in enumerate(zip(fit.history["loss"], fit.history["val_loss"],
                                                   strict=True))]

    model_dir = repository / NAME
    export_savedmodel(model, model_folder(repository, NAME) / "model.savedmodel")
    runner, timings, max_batch = configure_by_measurement(model_dir, "tensorflow", INPUTS,
                                                          OUTPUTS, inputs["test"])
    test_correction = np.concatenate([
        runner.run({k: v[i:i + 1024] for k, v in inputs["test"].items()})["pt_correction"][:, 0]
        for i in range(0, len(parts["test"]), 1024)])
    keras_correction = np.exp(model.predict(_arrays(inputs["test"]), batch_size=1024,
                                            verbose=0)[:, 0])
    export_difference = float(np.abs(test_correction - keras_correction).max())
    if export_difference > 1e-4:
        raise RuntimeError(f"SavedModel differs from Keras by {export_difference:.2g}")

    test = parts["test"]
    test_metrics = regression_metrics(test.reco_jet[:, 0], test.reco_jet[:, 0] * test_correction,
                                      test.gen_jet[:, 0], test.gen_jet[:, 1])
    rng = np.random.default_rng(seed)
    in_window = np.flatnonzero((test.gen_jet[:, 0] >= 500) & (test.gen_jet[:, 0] < 650))
    chosen = np.sort(rng.permutation(in_window)[:VALIDATION_JETS])
    validation = test.select(chosen)
    jet_samples.save_sample(model_dir / "validation.npz", validation, "constituents",
                            "reco_jet", "gen_jet")
    sample_correction = runner.run(regression_inputs(validation.constituents,
                                                     validation.reco_jet))["pt_correction"][:, 0]
    metrics = {
        "model": NAME,
        "test": test_metrics,
        "validation_sample": regression_metrics(
            validation.reco_jet[:, 0], validation.reco_jet[:, 0] * sample_correction,
            validation.gen_jet[:, 0], validation.gen_jet[:, 1])["inclusive"],
        "data": {"quick": quick, "selection": "reco jet pt > 400 GeV, |eta| < 2, matched to a "
                 "gen jet (dR < 0.4); both samples", "counts": jets.counts()},
        "training": {"epochs": len(history), "history": history, "seconds": training_seconds,
                     "parameters": int(model.count_params())},
        "export": {"max_batch_size": max_batch, "savedmodel_vs_keras_max_abs": export_difference,
                   "timings": [{"batch": t.batch, "ms_per_batch": t.seconds_per_batch * 1e3}
                               for t in timings]},
        "machine": {"host": platform.node(), "processor": platform.processor() or "unknown"},
        "seconds_total": time.perf_counter() - started,
    }
    write_json(model_dir / "metrics.json", metrics)
    card.write(model_dir, metrics, timings, test, test_correction, history)
    return metrics
