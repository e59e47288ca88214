"""Jets and their constituents → the inputs of `jet_tagger` and `jet_energy_regression`.

This is the one place where model inputs are computed: training imports it, and a grid job
calls it before sending jets to the server, so a model never sees features computed by
different code. numpy only; awkward arrays are accepted where awkward is installed
(`pip install 'offload[hep]'`), and imported only when one is passed.

Input layout (what a reconstruction job has, padded):

- `constituents`: float [n_jets, n_max, 6] with columns (pt [GeV], eta, phi [rad],
  energy [GeV], charge [e], ptype), sorted by pt descending, zero-padded (pt = 0 marks a
  padding slot). `ptype`: 0 charged hadron, 1 electron, 2 muon, 3 photon, 4 neutral hadron
  (:data:`PTYPES`; from a PF candidate's pdgId by :func:`ptypes_from_pdg_ids`).
- `jets`: float [n_jets, 4] = (pt [GeV], eta, phi [rad], mass [GeV]) of the jet axis.

Or, as awkward arrays in NanoAOD/PFNano naming (one entry per jet, events flattened):

- `constituents`: jagged candidate records ``var * {pt, eta, phi, mass, charge, pdgId}``,
  e.g. a jet's `PFCands` (see :mod:`offload.physics.pfnano` for the PFNano link table);
- `jets`: records ``{pt, eta, phi, mass}``, e.g. ``ak.flatten(events.FatJet)``.

A jet with more than :data:`MAX_CONSTITUENTS` constituents keeps its highest-pt ones, as the
models were trained (the tagger reads the first 64 of those, the regression all 128).
Use :func:`pad_constituents` to build `constituents` from per-jet ragged numpy arrays, and
:func:`constituents_from_candidates` from awkward candidate records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from offload.errors import InvalidInputError

#: Constituents per jet the models take (the highest-pt ones; more are dropped).
MAX_CONSTITUENTS = 128
#: Constituent types (the `ptype` column), by code.
CHARGED_HADRON, ELECTRON, MUON, PHOTON, NEUTRAL_HADRON = range(5)
PTYPES = ("charged_hadron", "electron", "muon", "photon", "neutral_hadron")
#: Columns of the input `constituents` array.
CONSTITUENT_COLUMNS = ("pt", "eta", "phi", "energy", "charge", "ptype")

#: |pdgId| of a particle-flow candidate → constituent type: the ids CMS particle-flow
#: candidates carry (NanoAOD/PFNano `PFCands_pdgId`, sign = charge convention). 1 and 2 are
#: CMS's forward-calorimeter (HF) hadronic and electromagnetic candidates, which the models'
#: detector has no counterpart for: neutral, they count as a neutral hadron and a photon.
#: Any other id is refused (:func:`ptypes_from_pdg_ids`).
PDG_ID_TYPES: dict[int, int] = {
    211: CHARGED_HADRON, 11: ELECTRON, 13: MUON, 22: PHOTON, 130: NEUTRAL_HADRON,
    1: NEUTRAL_HADRON, 2: PHOTON,
}
#: The pdgId a constituent type is written with (charged ones signed by the charge:
#: π+ = 211, e- = 11, μ- = 13), the inverse of :data:`PDG_ID_TYPES` on the detector's types.
TYPE_PDG_IDS = {CHARGED_HADRON: 211, ELECTRON: 11, MUON: 13, PHOTON: 22, NEUTRAL_HADRON: 130}
#: Fields of awkward candidate records (NanoAOD/PFNano naming) and of jet records.
CANDIDATE_FIELDS = ("pt", "eta", "phi", "mass", "charge", "pdgId")
JET_FIELDS = ("pt", "eta", "phi", "mass")

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


def ptypes_from_pdg_ids(pdg_ids: Any) -> np.ndarray:
    """Constituent types (int8) of particle-flow candidates from their pdgIds
    (:data:`PDG_ID_TYPES`, by absolute value). An id outside it raises
    :class:`~offload.InvalidInputError` naming the ids and how many candidates carry them."""
    ids = np.abs(np.asarray(pdg_ids, dtype=np.int64))
    types = _PDG_TABLE[np.minimum(ids, len(_PDG_TABLE) - 1)]
    unknown = types < 0
    if unknown.any():
        bad, counts = np.unique(np.asarray(pdg_ids, dtype=np.int64)[unknown], return_counts=True)
        shown = ", ".join(f"{i} ({c}x)" for i, c in zip(bad[:8], counts[:8], strict=False))
        raise InvalidInputError(
            f"unknown particle-flow candidate pdgId {shown}"
            f"{f' and {len(bad) - 8} more' if len(bad) > 8 else ''}: the jet models know "
            f"|pdgId| {sorted(PDG_ID_TYPES)} (offload.physics.jets.PDG_ID_TYPES)")
    return types.astype(np.int8)


def pdg_ids_from_ptypes(ptypes: Any, charges: Any) -> np.ndarray:
    """The pdgIds (int32) that constituents of types `ptypes` and charges `charges` are
    written with (:data:`TYPE_PDG_IDS`): what a PF candidate collection holds."""
    ptypes = np.asarray(ptypes, dtype=np.int64)
    if ptypes.size and (ptypes.min() < 0 or ptypes.max() >= len(PTYPES)):
        raise InvalidInputError(f"constituent types must be 0..{len(PTYPES) - 1} ({PTYPES})")
    table = np.array([TYPE_PDG_IDS[t] for t in range(len(PTYPES))], dtype=np.int32)
    ids = table[ptypes]
    sign = np.sign(np.asarray(charges, dtype=np.float64)).astype(np.int32)
    # π+ is +211, but e- and μ- are +11 and +13 (particle = negative charge)
    charged_sign = np.where((ptypes == ELECTRON) | (ptypes == MUON), -sign, sign)
    return np.where(sign != 0, ids * charged_sign, ids).astype(np.int32)


_PDG_TABLE = np.full(max(PDG_ID_TYPES) + 2, -1, dtype=np.int64)  # last slot: "too large"
for _pdg_id, _ptype in PDG_ID_TYPES.items():
    _PDG_TABLE[_pdg_id] = _ptype


def _awkward():
    try:
        import awkward
    except ImportError:  # pragma: no cover - depends on the install
        raise InvalidInputError("awkward arrays need the awkward package: "
                                "pip install 'offload[hep]'") from None
    return awkward


def is_awkward(value: Any) -> bool:
    """Whether `value` is an awkward Array or Record (checked without importing awkward)."""
    return type(value).__module__.split(".")[0] == "awkward"


def constituents_from_candidates(candidates: Any, n_max: int = MAX_CONSTITUENTS) -> np.ndarray:
    """Awkward candidate records, one list per jet (fields :data:`CANDIDATE_FIELDS`:
    pt, eta, phi, mass, charge, pdgId in NanoAOD/PFNano naming) → the zero-padded
    [n_jets, n_max, 6] float32 `constituents` array: energy from (pt, eta, mass), type from
    the pdgId, each jet's candidates sorted by pt descending (ties keep their order) and cut
    at `n_max`. A jet without candidates is all padding."""
    ak = _awkward()
    candidates = ak.Array(candidates)
    fields = set(candidates.fields)
    missing = [f for f in CANDIDATE_FIELDS if f not in fields]
    if missing:
        raise InvalidInputError(
            f"candidate records lack the field(s) {missing}: they need {list(CANDIDATE_FIELDS)} "
            f"(NanoAOD/PFNano naming), got {sorted(fields)}")
    if candidates.ndim != 2:
        raise InvalidInputError(
            f"candidates must be one list of records per jet (2 dimensions: jets x candidates), "
            f"got {candidates.ndim} dimensions ({candidates.type}); flatten the event axis "
            "first, e.g. ak.flatten(per_event_candidates, axis=1)")
    counts = ak.to_numpy(ak.num(candidates, axis=1)).astype(np.int64)
    flat = {f: ak.to_numpy(ak.flatten(candidates[f], axis=1)) for f in CANDIDATE_FIELDS}
    return _pad_flat(flat, counts, n_max)


def _pad_flat(flat: Mapping[str, np.ndarray], counts: np.ndarray, n_max: int) -> np.ndarray:
    """Flat candidate columns (jet after jet, `counts` per jet) → padded constituents."""
    n_jets = len(counts)
    out = np.zeros((n_jets, n_max, len(CONSTITUENT_COLUMNS)), np.float32)
    total = int(counts.sum())
    if total == 0:
        return out
    ptype = ptypes_from_pdg_ids(flat["pdgId"])
    pt = np.asarray(flat["pt"], np.float64)
    eta = np.asarray(flat["eta"], np.float64)
    mass = np.asarray(flat["mass"], np.float64)
    jet = np.repeat(np.arange(n_jets), counts)
    order = np.lexsort((-pt, jet))  # by jet, then pt descending; stable for ties
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(total) - offsets[jet]  # jet[order] == jet: a jet's slots stay together
    keep = rank < n_max
    rows, slots, chosen = jet[keep], rank[keep], order[keep]
    energy = np.sqrt((pt * np.cosh(eta)) ** 2 + mass**2)
    columns = (pt, eta, np.asarray(flat["phi"], np.float64), energy,
               np.asarray(flat["charge"], np.float64), ptype)
    for c, column in enumerate(columns):
        out[rows, slots, c] = column[chosen]
    return out


def jets_from_records(jets: Any) -> np.ndarray:
    """Awkward jet records with fields pt, eta, phi, mass (one per jet; e.g.
    ``ak.flatten(events.FatJet)``), or a mapping of such arrays → float32 [n_jets, 4]."""
    if is_awkward(jets):
        ak = _awkward()
        jets = ak.Array(jets)
        fields = set(jets.fields)
        if jets.ndim != 1:
            raise InvalidInputError(
                f"jets must be one record per jet (1 dimension), got {jets.ndim} dimensions "
                f"({jets.type}); flatten the event axis first, e.g. ak.flatten(events.FatJet)")
        get = (lambda f: ak.to_numpy(jets[f]))  # noqa: E731
    else:
        fields = set(jets)
        get = (lambda f: np.asarray(jets[f]))  # noqa: E731
    missing = [f for f in JET_FIELDS if f not in fields]
    if missing:
        raise InvalidInputError(f"jet records lack the field(s) {missing}: they need "
                                f"{list(JET_FIELDS)}, got {sorted(fields)}")
    return np.stack([get(f) for f in JET_FIELDS], axis=-1).astype(np.float32)


def pad_constituents(per_jet: Sequence[np.ndarray], n_max: int = MAX_CONSTITUENTS) -> np.ndarray:
    """Ragged per-jet arrays [n_i, 6] → one zero-padded [n_jets, n_max, 6] float32 array,
    each jet's constituents sorted by pt descending and cut at `n_max`. Awkward candidate
    records go through :func:`constituents_from_candidates`."""
    if is_awkward(per_jet):
        return constituents_from_candidates(per_jet, n_max)
    out = np.zeros((len(per_jet), n_max, len(CONSTITUENT_COLUMNS)), np.float32)
    for row, constituents in enumerate(per_jet):
        constituents = np.asarray(constituents, np.float32)
        if constituents.ndim != 2 or constituents.shape[1] != len(CONSTITUENT_COLUMNS):
            raise InvalidInputError(
                f"jet {row}: constituents must have shape [n, {len(CONSTITUENT_COLUMNS)}] "
                f"with columns {CONSTITUENT_COLUMNS}, got {list(constituents.shape)}")
        order = np.argsort(-constituents[:, 0], kind="stable")[:n_max]
        out[row, : len(order)] = constituents[order]
    return out


def _check(constituents: Any, jets: Any) -> tuple[np.ndarray, np.ndarray]:
    if is_awkward(constituents):
        constituents = constituents_from_candidates(constituents)
    if is_awkward(jets) or isinstance(jets, Mapping):
        jets = jets_from_records(jets)
    constituents = np.asarray(constituents, np.float32)
    jets = np.asarray(jets, np.float32)
    if constituents.ndim != 3 or constituents.shape[2] != len(CONSTITUENT_COLUMNS):
        raise InvalidInputError(
            f"constituents must have shape [n_jets, n_max, {len(CONSTITUENT_COLUMNS)}] with "
            f"columns {CONSTITUENT_COLUMNS}, got {list(constituents.shape)}")
    if jets.shape != (constituents.shape[0], 4):
        raise InvalidInputError(
            f"jets must have shape [{constituents.shape[0]}, 4] = (pt, eta, phi, mass) per "
            f"jet, got {list(jets.shape)}")
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


def tagger_inputs(constituents: Any, jets: Any) -> dict[str, np.ndarray]:
    """What `jet_tagger` takes: points, features, mask."""
    return constituent_inputs(constituents, jets)


def regression_inputs(constituents: Any, jets: Any) -> dict[str, np.ndarray]:
    """What `jet_energy_regression` takes: jet, features, mask. Its output `pt_correction`
    multiplies the reconstructed jet pt."""
    return inputs_for(("jet_energy_regression",), constituents, jets)["jet_energy_regression"]


#: The models whose inputs this module computes.
MODEL_INPUTS: dict[str, Callable[[Any, Any], dict[str, np.ndarray]]] = {
    "jet_tagger": tagger_inputs, "jet_energy_regression": regression_inputs}


def inputs_for(models: Iterable[str], constituents: Any, jets: Any
               ) -> dict[str, dict[str, np.ndarray]]:
    """The inputs of several jet models ({model: {input: array}}) from one set of jets, the
    conversion and the per-constituent features computed once for all of them."""
    models = list(models)
    unknown = [m for m in models if m not in MODEL_INPUTS]
    if unknown:
        raise InvalidInputError(f"no jet preprocessing for model(s) {unknown}: "
                                f"offload.physics.jets computes the inputs of "
                                f"{', '.join(MODEL_INPUTS)}")
    constituents, jets = _check(constituents, jets)
    per_constituent = constituent_inputs(constituents, jets)
    out: dict[str, dict[str, np.ndarray]] = {}
    for model in models:
        if model == "jet_tagger":
            out[model] = per_constituent
        else:
            out[model] = {"jet": jet_inputs(constituents, jets),
                          "features": per_constituent["features"],
                          "mask": per_constituent["mask"]}
    return out
