"""Jets and their constituents → the inputs of `jet_tagger` and `jet_energy_regression`.

This is the one place where model inputs are computed: training imports it, and a grid job
calls it before sending jets to the server, so a model never sees features computed by
different code. numpy only.

Input layout (what a reconstruction job has, padded):

- `constituents`: float [n_jets, n_max, 6] with columns (pt [GeV], eta, phi [rad],
  energy [GeV], charge [e], ptype), sorted by pt descending, zero-padded (pt = 0 marks a
  padding slot). `ptype`: 0 charged hadron, 1 electron, 2 muon, 3 photon, 4 neutral hadron.
- `jets`: float [n_jets, 4] = (pt [GeV], eta, phi [rad], mass [GeV]) of the jet axis.

Use :func:`pad_constituents` to build `constituents` from per-jet ragged arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Constituents per jet the models take (the highest-pt ones; more are dropped).
MAX_CONSTITUENTS = 128
#: Constituent types (the `ptype` column).
PTYPES = ("charged_hadron", "electron", "muon", "photon", "neutral_hadron")
#: Columns of the input `constituents` array.
CONSTITUENT_COLUMNS = ("pt", "eta", "phi", "energy", "charge", "ptype")

#: Per-constituent model features, in order.
CONSTITUENT_FEATURES = (
    "delta_eta",        # eta - eta_jet
    "delta_phi",        # phi - phi_jet, wrapped into [-pi, pi)
    "log_pt",           # ln(pt / GeV)
    "log_energy",       # ln(E / GeV)
    "log_pt_rel",       # ln(pt / pt_jet)
    "log_energy_rel",   # ln(E / E_jet)
    "delta_r",          # sqrt(delta_eta^2 + delta_phi^2)
    "charge",
    *(f"is_{name}" for name in PTYPES),  # one-hot type
)
#: Per-jet features of the energy regression, in order.
JET_FEATURES = (
    "log_pt_over_500",  # ln(pt_jet / 500 GeV)
    "eta",
    "mass_over_pt",     # m_jet / pt_jet
    "multiplicity",     # number of constituents / 50
    *(f"energy_fraction_{name}" for name in PTYPES),  # share of the jet energy per type
)


def pad_constituents(per_jet: Sequence[np.ndarray], n_max: int = MAX_CONSTITUENTS) -> np.ndarray:
    """Ragged per-jet arrays [n_i, 6] → one zero-padded [n_jets, n_max, 6] float32 array,
    each jet's constituents sorted by pt descending and cut at `n_max`."""
    out = np.zeros((len(per_jet), n_max, len(CONSTITUENT_COLUMNS)), np.float32)
    for row, constituents in enumerate(per_jet):
        constituents = np.asarray(constituents, np.float32)
        if constituents.ndim != 2 or constituents.shape[1] != len(CONSTITUENT_COLUMNS):
            raise ValueError(
                f"jet {row}: constituents must have shape [n, {len(CONSTITUENT_COLUMNS)}] "
                f"with columns {CONSTITUENT_COLUMNS}, got {list(constituents.shape)}")
        order = np.argsort(-constituents[:, 0], kind="stable")[:n_max]
        out[row, : len(order)] = constituents[order]
    return out


def _check(constituents: np.ndarray, jets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    constituents = np.asarray(constituents, np.float32)
    jets = np.asarray(jets, np.float32)
    if constituents.ndim != 3 or constituents.shape[2] != len(CONSTITUENT_COLUMNS):
        raise ValueError(
            f"constituents must have shape [n_jets, n_max, {len(CONSTITUENT_COLUMNS)}] with "
            f"columns {CONSTITUENT_COLUMNS}, got {list(constituents.shape)}")
    if jets.shape != (constituents.shape[0], 4):
        raise ValueError(f"jets must have shape [{constituents.shape[0]}, 4] = (pt, eta, phi, "
                         f"mass) per jet, got {list(jets.shape)}")
    if constituents.shape[1] > MAX_CONSTITUENTS:
        constituents = constituents[:, :MAX_CONSTITUENTS]
    elif constituents.shape[1] < MAX_CONSTITUENTS:
        pad = MAX_CONSTITUENTS - constituents.shape[1]
        constituents = np.pad(constituents, ((0, 0), (0, pad), (0, 0)))
    return constituents, jets


def jet_energy(jets: np.ndarray) -> np.ndarray:
    """E = sqrt((pt cosh eta)^2 + m^2) of (pt, eta, phi, mass) rows."""
    pt, eta, mass = jets[:, 0], jets[:, 1], jets[:, 3]
    return np.sqrt((pt * np.cosh(eta)) ** 2 + mass**2)


def constituent_inputs(constituents: np.ndarray, jets: np.ndarray) -> dict[str, np.ndarray]:
    """The per-constituent model inputs:

    - `points` float32 [n, 128, 2]: (delta_eta, delta_phi), the coordinates the tagger's
      graph is built on;
    - `features` float32 [n, 128, 13]: :data:`CONSTITUENT_FEATURES`;
    - `mask` float32 [n, 128, 1]: 1 for a real constituent, 0 for padding.

    Padding slots are all zeros.
    """
    constituents, jets = _check(constituents, jets)
    pt, eta, phi, energy, charge, ptype = np.moveaxis(constituents, 2, 0)
    real = pt > 0
    jet_pt, jet_eta, jet_phi = (jets[:, i, None] for i in range(3))
    jet_e = jet_energy(jets)[:, None]
    delta_eta = eta - jet_eta
    delta_phi = (phi - jet_phi + np.pi) % (2 * np.pi) - np.pi
    safe_pt = np.where(real, pt, 1.0)
    safe_e = np.where(real, np.maximum(energy, 1e-6), 1.0)
    columns = [
        delta_eta, delta_phi, np.log(safe_pt), np.log(safe_e), np.log(safe_pt / jet_pt),
        np.log(safe_e / jet_e), np.hypot(delta_eta, delta_phi), charge,
        *((ptype == code).astype(np.float32) for code in range(len(PTYPES))),
    ]
    features = np.stack(columns, axis=-1).astype(np.float32) * real[..., None]
    return {
        "points": features[..., :2].copy(),
        "features": features,
        "mask": real[..., None].astype(np.float32),
    }


def jet_inputs(constituents: np.ndarray, jets: np.ndarray) -> np.ndarray:
    """The per-jet features of the energy regression, float32 [n, 9]: :data:`JET_FEATURES`."""
    constituents, jets = _check(constituents, jets)
    pt, energy, ptype = constituents[..., 0], constituents[..., 3], constituents[..., 5]
    real = pt > 0
    total = np.maximum((energy * real).sum(axis=1), 1e-6)
    fractions = [((energy * real * (ptype == code)).sum(axis=1) / total)
                 for code in range(len(PTYPES))]
    columns = [np.log(jets[:, 0] / 500.0), jets[:, 1], jets[:, 3] / jets[:, 0],
               real.sum(axis=1) / 50.0, *fractions]
    return np.stack(columns, axis=-1).astype(np.float32)


def tagger_inputs(constituents: np.ndarray, jets: np.ndarray) -> dict[str, np.ndarray]:
    """What `jet_tagger` takes: points, features, mask."""
    return constituent_inputs(constituents, jets)


def regression_inputs(constituents: np.ndarray, jets: np.ndarray) -> dict[str, np.ndarray]:
    """What `jet_energy_regression` takes: jet, features, mask. Its output `pt_correction`
    multiplies the reconstructed jet pt."""
    per_constituent = constituent_inputs(constituents, jets)
    return {"jet": jet_inputs(constituents, jets), "features": per_constituent["features"],
            "mask": per_constituent["mask"]}
