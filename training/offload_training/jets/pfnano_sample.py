"""A small PFNano-like ROOT file from the project's own event pipeline (`make data`).

Pythia 8 events (:mod:`.pythia`: tt̄ and QCD, alternating in blocks) → the parametric
detector (:mod:`.detector`) → anti-kT R = 0.8 jets (:mod:`.clustering`), written the way a
CMS PFNano file holds them, in a TTree ``Events``:

=============================  =========================================================
branch                         content
=============================  =========================================================
``nFatJet``, ``FatJet_pt``,    the event's anti-kT R = 0.8 jets with pt > 200 GeV,
``_eta``, ``_phi``, ``_mass``  pt descending (GeV, rad)
``nPFCands``, ``PFCands_pt``,  every reconstructed object of the event (the detector's
``_eta``, ``_phi``, ``_mass``, particle-flow candidates), in the detector's order; pdgId
``_charge``, ``_pdgId``        from the type and charge by
                               :func:`offload.physics.jets.pdg_ids_from_ptypes`
``nFatJetPFCands``,            the link table: candidate ``_pFCandsIdx`` belongs to jet
``FatJetPFCands_jetIdx``,      ``_jetIdx`` (indices within the event), jet after jet
``FatJetPFCands_pFCandsIdx``
``FatJet_isTop``               1 for a jet of a tt̄ event within ΔR < 0.8 of a hadronic top
                               whose b, q, q̄' are all inside (as the tagger's signal), else 0
``event``, ``sample``          event number; 1 = tt̄, 2 = QCD
=============================  =========================================================

    python -m offload_training.jets.pfnano_sample --events 2000 --output data/pfnano_sample.root

The file depends only on (events, seed, events per block). It is written to a temporary
name and renamed when complete.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from offload.physics.jets import pdg_ids_from_ptypes

from . import dataset, detector, pythia
from .clustering import cluster, kinematics

FATJET_PT_MIN = 200.0  # GeV, as CMS NanoAOD's FatJet collection (170 GeV) rounded up
EVENTS_PER_BLOCK = 50  # events per Pythia batch; blocks alternate tt̄, QCD
SAMPLE_CODES = {"ttbar": 1, "qcd": 2}


def _block(sample: str, seed: int, block: int, n_events: int) -> dict[str, list]:
    """Events of one block as per-event lists of numpy arrays, per branch."""
    pythia_seed, rng = dataset.chunk_seeds(sample, seed, block)
    generator = pythia.make_pythia(sample, pythia_seed)
    batch = pythia.generate_batch(generator, n_events)
    reco = detector.simulate(batch.visible, rng)
    jets = cluster(reco.px, reco.py, reco.pz, reco.e, reco.offsets, FATJET_PT_MIN)
    mass = np.sqrt(np.maximum(reco.e**2 - reco.pt**2 - reco.pz**2, 0.0))
    pdg = pdg_ids_from_ptypes(reco.ptype, reco.charge)
    out: dict[str, list] = {}

    def add(name: str, value: np.ndarray) -> None:
        out.setdefault(name, []).append(value)

    for k, event_jets in enumerate(jets):
        lo, hi = reco.offsets[k], reco.offsets[k + 1]
        kin = kinematics(event_jets.p4)
        order = np.argsort(-kin[:, 0], kind="stable")
        kin = kin[order]
        for name, column in zip(("pt", "eta", "phi", "mass"), kin.T, strict=True):
            add(f"FatJet_{name}", column.astype(np.float32))
        add("FatJet_isTop", np.array([sample == "ttbar" and dataset._contains_top(j, batch.tops, k)
                                      for j in kin], dtype=np.int8))
        for name, column in (("pt", reco.pt), ("eta", reco.eta), ("phi", reco.phi),
                             ("mass", mass), ("charge", reco.charge)):
            add(f"PFCands_{name}", column[lo:hi].astype(np.float32))
        add("PFCands_pdgId", pdg[lo:hi])
        members = [event_jets.constituents[j] for j in order]
        add("FatJetPFCands_jetIdx", np.repeat(np.arange(len(members), dtype=np.int32),
                                              [len(m) for m in members]))
        add("FatJetPFCands_pFCandsIdx", (np.concatenate(members) if members
                                         else np.zeros(0)).astype(np.int32))
        add("event", np.int64(block * EVENTS_PER_BLOCK + k))
        add("sample", np.int8(SAMPLE_CODES[sample]))
    return out


def write_sample(path: Path, n_events: int, *, seed: int = 0, progress: bool = True) -> dict:
    """Write `n_events` events (alternating blocks of tt̄ and QCD) to `path`; returns counts."""
    import awkward as ak
    import uproot

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    started = time.perf_counter()
    written = jets = 0
    try:
        with uproot.recreate(partial) as file:
            tree = None
            block = 0
            while written < n_events:
                sample = ("ttbar", "qcd")[block % 2]
                n = min(EVENTS_PER_BLOCK, n_events - written)
                columns = _block(sample, seed, block, n)
                block += 1
                if not columns:  # Pythia failed every event of the block
                    continue
                arrays = {
                    "FatJet": ak.zip({f: ak.Array(columns[f"FatJet_{f}"])
                                      for f in ("pt", "eta", "phi", "mass", "isTop")}),
                    "PFCands": ak.zip({f: ak.Array(columns[f"PFCands_{f}"])
                                       for f in ("pt", "eta", "phi", "mass", "charge",
                                                 "pdgId")}),
                    "FatJetPFCands": ak.zip({f: ak.Array(columns[f"FatJetPFCands_{f}"])
                                             for f in ("jetIdx", "pFCandsIdx")}),
                    "event": np.array(columns["event"], np.int64),
                    "sample": np.array(columns["sample"], np.int8),
                }
                if tree is None:
                    tree = file.mktree("Events", {k: v.type.content if isinstance(v, ak.Array)
                                                  else v.dtype for k, v in arrays.items()})
                tree.extend(arrays)
                written += len(arrays["event"])
                jets += int(ak.sum(ak.num(arrays["FatJet"])))
                if progress:
                    print(f"\r{written}/{n_events} events, {jets} fat jets", end="", flush=True)
        Path(partial).replace(path)
    finally:
        if partial.exists():
            partial.unlink()
    if progress:
        print()
    return {"events": written, "jets": jets, "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    from offload_training.paths import data_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None,
                        help="default: data/pfnano_sample.root ($OFFLOAD_DATA)")
    args = parser.parse_args(argv)
    if args.events < 1:
        parser.error("--events must be at least 1")
    output = args.output or data_dir() / "pfnano_sample.root"
    counts = write_sample(output, args.events, seed=args.seed)
    print(f"wrote {output}: {counts['events']} events, {counts['jets']} fat jets in "
          f"{counts['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
