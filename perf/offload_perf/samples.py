"""Realistic inputs for the physics models, from their validation samples.

`model_repository/<model>/validation.npz` holds what a job would have before inference:
reconstructed jets and their constituents for the jet models, shower energies for the
calorimeter generator. The model inputs are computed from them with the client's own
preprocessing (`offload.physics.jets`), as a grid job does; any other model gets random
inputs of its declared shapes (`offload_perf.sweep.generated_inputs`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import offload
from offload.physics.jets import regression_inputs, tagger_inputs

#: Models whose inputs come from reconstructed jets (constituents, reco_jet).
JET_MODELS = {"jet_tagger": tagger_inputs, "jet_energy_regression": regression_inputs}


def jet_sample(repository: Path, model: str = "jet_tagger") -> tuple[np.ndarray, np.ndarray]:
    """(constituents [n, 128, 6], reco jets [n, 4]) of a jet model's validation sample."""
    path = Path(repository) / model / "validation.npz"
    if not path.is_file():
        from offload_server.errors import ModelRepositoryError

        raise ModelRepositoryError(
            f"{path} is missing: the jet events come from the validation sample of '{model}' "
            "(make models writes it)")
    with np.load(path, allow_pickle=False) as data:
        return data["constituents"].astype(np.float32), data["reco_jet"].astype(np.float32)


def model_inputs(model: offload.Model, batch: int, repository: Path | None,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """`batch` rows of inputs for `model`: from its validation sample when this module knows
    how to compute them, else random to the model's metadata."""
    from offload_perf.sweep import generated_inputs

    rng = np.random.default_rng(seed)
    folder = Path(repository) / model.name if repository is not None else None
    if folder is not None and model.name in JET_MODELS and (folder / "validation.npz").is_file():
        constituents, jets = jet_sample(repository, model.name)
        rows = rng.integers(0, len(jets), batch)
        return JET_MODELS[model.name](constituents[rows], jets[rows])
    sample = folder / "validation.npz" if folder is not None else None
    names = {t.name for t in model.inputs}
    if sample is not None and sample.is_file() and names == {"energy", "latent", "uniform"}:
        # The calorimeter generator: shower energies from the sample, its noise drawn here.
        with np.load(sample, allow_pickle=False) as data:
            energies = data["energy"].astype(np.float32)
        shapes = {t.name: t.shape[1:] if model.max_batch_size > 0 else t.shape
                  for t in model.inputs}
        return {"energy": rng.choice(energies, batch).reshape(batch, *shapes["energy"]),
                "latent": rng.standard_normal((batch, *shapes["latent"]), np.float32),
                "uniform": rng.random((batch, *shapes["uniform"]), np.float32)}
    return generated_inputs(model, batch, seed)
