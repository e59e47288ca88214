"""The PFNano layout: fat jets, every particle-flow candidate of an event, and the link
table between them → per-jet candidates, and the jet models' inputs.

A CMS PFNano (NanoAOD with PF candidates) event holds

- the fat jets, ``FatJet_pt``, ``FatJet_eta``, ``FatJet_phi``, ``FatJet_mass`` (counter
  ``nFatJet``);
- all candidates of the event in one collection, in any order: ``PFCands_pt``, ``_eta``,
  ``_phi``, ``_mass``, ``_charge``, ``_pdgId`` (counter ``nPFCands``);
- the link table ``FatJetPFCands_jetIdx`` / ``FatJetPFCands_pFCandsIdx`` (counter
  ``nFatJetPFCands``): entry k says that candidate ``pFCandsIdx[k]`` belongs to jet
  ``jetIdx[k]``, both indices within the event. Its entries may come in any order.

:func:`gather` turns a chunk of such events (an awkward array of records with those
fields, as ``uproot`` reads them, or a mapping of the branches) into one entry per jet, all
events' jets one after the other: each jet's candidates ordered by pt (descending; ties by
candidate index, so the result does not depend on the order of the link table), its
kinematics, and how many jets each event has, to put per-jet results back per event
(``ak.unflatten(scores, result.jets_per_event)``). Needs awkward (``offload[hep]``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from offload.errors import InvalidInputError
from offload.physics import jets as pj

JET_COLLECTION = "FatJet"
CANDIDATE_COLLECTION = "PFCands"
LINK_COLLECTION = "FatJetPFCands"
JET_BRANCHES = tuple(f"{JET_COLLECTION}_{f}" for f in pj.JET_FIELDS)
CANDIDATE_BRANCHES = tuple(f"{CANDIDATE_COLLECTION}_{f}" for f in pj.CANDIDATE_FIELDS)
LINK_JET, LINK_CANDIDATE = (f"{LINK_COLLECTION}_jetIdx", f"{LINK_COLLECTION}_pFCandsIdx")
#: Every branch :func:`gather` reads.
BRANCHES = (*JET_BRANCHES, *CANDIDATE_BRANCHES, LINK_JET, LINK_CANDIDATE)


@dataclass
class Gathered:
    """The jets of a chunk of events, one entry per jet (events flattened, in order)."""

    #: Candidate columns (:data:`offload.physics.jets.CANDIDATE_FIELDS`), flat: jet after
    #: jet, each jet's candidates by pt descending.
    candidates: dict[str, np.ndarray]
    candidates_per_jet: np.ndarray  # int64 [n_jets]
    jets: np.ndarray  # float32 [n_jets, 4] = (pt, eta, phi, mass)
    jets_per_event: np.ndarray  # int64 [n_events]

    @property
    def n_jets(self) -> int:
        return len(self.jets)

    @property
    def truncated(self) -> int:
        """Jets with more candidates than the models take (they keep the highest-pt ones)."""
        return int((self.candidates_per_jet > pj.MAX_CONSTITUENTS).sum())

    def constituents(self, n_max: int = pj.MAX_CONSTITUENTS) -> np.ndarray:
        """The padded [n_jets, n_max, 6] `constituents` array of :mod:`offload.physics.jets`."""
        return pj._pad_flat(self.candidates, self.candidates_per_jet, n_max)

    def inputs(self, models: Iterable[str]) -> dict[str, dict[str, np.ndarray]]:
        """The inputs of the jet models `models` ({model: {input: array}}) for these jets."""
        return pj.inputs_for(models, self.constituents(), self.jets)

    def candidate_records(self) -> Any:
        """The candidates as an awkward array, one list of records per jet."""
        ak = pj._awkward()
        return ak.unflatten(ak.zip(dict(self.candidates)), self.candidates_per_jet)


def _column(events: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(flat values, counts per event) of one jagged branch."""
    ak = pj._awkward()
    try:
        array = events[name]
    except (KeyError, ValueError, AttributeError):
        raise InvalidInputError(f"the events lack the branch {name}") from None
    array = ak.Array(array)
    if array.ndim != 2:
        raise InvalidInputError(f"branch {name} must hold one list per event, got {array.type}")
    return (ak.to_numpy(ak.flatten(array, axis=1)),
            ak.to_numpy(ak.num(array, axis=1)).astype(np.int64))


def _collection(events: Any, branches: tuple[str, ...]) -> tuple[dict[str, np.ndarray],
                                                                 np.ndarray]:
    columns, counts = {}, None
    for name in branches:
        values, n = _column(events, name)
        if counts is None:
            counts = n
        elif not np.array_equal(n, counts):
            raise InvalidInputError(f"branches {branches[0]} and {name} differ in length per "
                                    "event: they must share one counter")
        columns[name.split("_", 1)[1]] = values
    assert counts is not None
    return columns, counts


def gather(events: Mapping[str, Any] | Any, first_entry: int = 0) -> Gathered:
    """The jets of `events` with their candidates, from the PFNano link table (see the
    module doc). `first_entry` (the chunk's first entry in its file) only numbers events
    in error messages. Bad links (an index outside its event's collection, a candidate
    linked twice to one jet) and unknown pdgIds raise :class:`~offload.InvalidInputError`."""
    jet_columns, jets_per_event = _collection(events, JET_BRANCHES)
    cand_columns, cands_per_event = _collection(events, CANDIDATE_BRANCHES)
    links, links_per_event = _collection(events, (LINK_JET, LINK_CANDIDATE))
    jet_idx, cand_idx = links["jetIdx"], links["pFCandsIdx"]
    n_events = len(jets_per_event)
    if not (len(cands_per_event) == len(links_per_event) == n_events):
        raise InvalidInputError("the FatJet, PFCands and FatJetPFCands branches hold different "
                                "numbers of events")
    event = np.repeat(np.arange(n_events), links_per_event)
    jet_idx = jet_idx.astype(np.int64)
    cand_idx = cand_idx.astype(np.int64)
    for what, index, per_event in (("jet", jet_idx, jets_per_event),
                                   ("candidate", cand_idx, cands_per_event)):
        bad = (index < 0) | (index >= per_event[event])
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            e = int(event[k])
            raise InvalidInputError(
                f"entry {first_entry + e}: the link table ({LINK_JET}/{LINK_CANDIDATE}) points "
                f"at {what} {int(index[k])}, but the event has {int(per_event[e])} "
                f"({int(bad.sum())} bad link(s) in entries {first_entry}-"
                f"{first_entry + n_events - 1})")
    jet_offsets = np.concatenate([[0], np.cumsum(jets_per_event)[:-1]])
    cand_offsets = np.concatenate([[0], np.cumsum(cands_per_event)[:-1]])
    jet = jet_offsets[event] + jet_idx  # global over the chunk
    cand = cand_offsets[event] + cand_idx
    pt = cand_columns["pt"][cand].astype(np.float64)
    order = np.lexsort((cand, -pt, jet))  # by jet, pt descending, candidate index
    jet, cand = jet[order], cand[order]
    repeated = (jet[1:] == jet[:-1]) & (cand[1:] == cand[:-1])
    if repeated.any():
        k = int(np.flatnonzero(repeated)[0])
        e = int(np.searchsorted(jet_offsets, jet[k], side="right") - 1)
        raise InvalidInputError(
            f"entry {first_entry + e}: the link table lists candidate "
            f"{int(cand[k] - cand_offsets[e])} twice for jet {int(jet[k] - jet_offsets[e])}")
    n_jets = int(jets_per_event.sum())
    candidates = {field: cand_columns[field][cand] for field in pj.CANDIDATE_FIELDS}
    try:
        pj.ptypes_from_pdg_ids(candidates["pdgId"])
    except InvalidInputError as error:
        raise InvalidInputError(f"entries {first_entry}-{first_entry + n_events - 1}: "
                                f"{error}") from None
    jets = np.stack([jet_columns[f] for f in pj.JET_FIELDS], axis=-1).astype(np.float32)
    return Gathered(candidates, np.bincount(jet, minlength=n_jets).astype(np.int64), jets,
                    jets_per_event)
