"""Model-card text shared by the jet models' cards, written from the client's own constants
so that a card cannot disagree with what `offload.physics.jets` accepts."""

from __future__ import annotations

from offload.physics.jets import (
    CONSTITUENT_COLUMNS,
    MAX_CONSTITUENTS,
    PDG_ID_TYPES,
    PTYPES,
)

_UNITS = {"pt": " [GeV]", "phi": " [rad]", "energy": " [GeV]", "charge": " [e]"}


def raw_jet_inputs(builder: str) -> str:
    """The "what a job passes" section: the raw arrays `builder` (e.g. `tagger_inputs`)
    takes, their columns and the constituent type codes."""
    columns = ", ".join(f"`{c}`{_UNITS.get(c, '')}" for c in CONSTITUENT_COLUMNS)
    codes = ", ".join(f"{code} {name.replace('_', ' ')}" for code, name in enumerate(PTYPES))
    by_type: dict[int, list[int]] = {}
    for pdg_id, code in sorted(PDG_ID_TYPES.items()):
        by_type.setdefault(code, []).append(pdg_id)
    pdg = "; ".join(f"{PTYPES[code].replace('_', ' ')}: {', '.join(map(str, ids))}"
                    for code, ids in sorted(by_type.items()))
    shape = (f"float [n_jets, n_max, {len(CONSTITUENT_COLUMNS)}], highest pt first, "
             "zero-padded (pt = 0 marks padding)")
    return f"""### What a job passes (raw arrays)
`offload.physics.jets.{builder}(constituents, jets)` takes

| argument | shape | columns |
| --- | --- | --- |
| `constituents` | {shape} | {columns} |
| `jets` | float [n_jets, 4] | `pt` [GeV], `eta`, `phi` [rad], `mass` [GeV] of the jet axis |

`ptype` codes: {codes}. From a particle-flow candidate's |pdgId|
(`ptypes_from_pdg_ids`): {pdg}; any other id is refused. `pad_constituents(per_jet_rows)`
builds the padded array from ragged per-jet rows, keeping a jet's {MAX_CONSTITUENTS}
highest-pt constituents; awkward NanoAOD/PFNano candidate records
(`pt, eta, phi, mass, charge, pdgId`) are accepted as they are (`offload.physics.pfnano`).
"""
