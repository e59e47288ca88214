"""A simple parametric detector: stable visible particles → reconstructed constituents.

Particle-flow-like and deliberately simple: every particle becomes at most one
reconstructed object (no shower overlap, no cluster merging, no pile-up, no magnetic-field
bending), so each object keeps the index of the generator particle it came from.

Which subdetector sees a particle:

- **Tracker** (|η| < :data:`TRACKER_ETA_MAX`): a charged particle with
  pT > :data:`TRACK_PT_MIN` is tracked with probability :data:`TRACK_EFFICIENCY`. Its pT is
  smeared with σ(pT)/pT = :data:`TRACK_RESOLUTION_CURVATURE`·pT ⊕
  :data:`TRACK_RESOLUTION_CONSTANT`; its direction is kept; its energy follows from its true
  mass. Electrons and muons with a track are identified as such, every other track is a
  charged hadron.
- A charged particle **without a track** (outside the tracker, below the pT threshold, or
  lost to the inefficiency) is seen by the calorimeters as a neutral object: an electron by
  the ECAL (a photon), a hadron by the HCAL (a neutral hadron). A muon without a track is
  lost: a minimum-ionising particle leaves no useful calorimeter energy.
- **ECAL** (|η| < :data:`ECAL_ETA_MAX`): photons and track-less electrons, with response 1,
  σ(E)/E = :data:`ECAL_STOCHASTIC`/√E ⊕ :data:`ECAL_CONSTANT`, kept above
  :data:`ECAL_E_MIN` (measured energy).
- **HCAL** (|η| < :data:`HCAL_ETA_MAX`): neutral hadrons and track-less charged hadrons,
  non-compensating: mean response R_h(E) = :data:`HCAL_RESPONSE_OFFSET` +
  :data:`HCAL_RESPONSE_SLOPE`·log10(E/GeV), capped at :data:`HCAL_RESPONSE_MAX`;
  σ(E)/E = :data:`HCAL_STOCHASTIC`/√E ⊕ :data:`HCAL_CONSTANT` (at the true energy), kept
  above :data:`HCAL_E_MIN` (measured energy).
- Calorimeter objects are massless, their η and φ smeared by :data:`CALO_ANGULAR_SIGMA`.
- Neutrinos are invisible; anything outside all acceptances is lost.

Energies in GeV, ⊕ = sum in quadrature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from offload.physics.jets import (
    CHARGED_HADRON,
    ELECTRON,
    MUON,
    NEUTRAL_HADRON,
    PHOTON,
    PTYPES,
)

from .pythia import Particles, pseudorapidity

# Tracker
TRACKER_ETA_MAX = 2.5  # |η| acceptance of the tracker
TRACK_PT_MIN = 0.5  # GeV; charged particles below are not tracked (→ calorimeters)
TRACK_EFFICIENCY = 0.95  # probability that a charged particle in acceptance is tracked
TRACK_RESOLUTION_CURVATURE = 1e-4  # 1/GeV; σ(pT)/pT term growing with pT
TRACK_RESOLUTION_CONSTANT = 0.005  # σ(pT)/pT constant term (multiple scattering)

# Electromagnetic calorimeter
ECAL_ETA_MAX = 3.0
ECAL_STOCHASTIC = 0.10  # √GeV; σ(E)/E = a/√E ⊕ b
ECAL_CONSTANT = 0.01
ECAL_E_MIN = 0.5  # GeV, on the measured energy
ECAL_RESPONSE = 1.0

# Hadronic calorimeter
HCAL_ETA_MAX = 3.0
HCAL_RESPONSE_OFFSET = 0.80  # R_h(E) = offset + slope · log10(E/GeV), ≤ max
HCAL_RESPONSE_SLOPE = 0.05
HCAL_RESPONSE_MAX = 0.95
HCAL_STOCHASTIC = 0.50  # √GeV
HCAL_CONSTANT = 0.05
HCAL_E_MIN = 1.0  # GeV, on the measured energy

CALO_ANGULAR_SIGMA = 0.02  # σ(η) = σ(φ) of calorimeter objects

# Constituent types (the `ptype` column of the data set): defined once, in the client's
# preprocessing, which also maps particle-flow pdgIds onto them (PDG_ID_TYPES).
PTYPE_NAMES = tuple(name.replace("_", " ") for name in PTYPES)


@dataclass
class Reconstructed:
    """Reconstructed objects of a batch, flat, in event order."""

    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    e: np.ndarray
    pt: np.ndarray
    eta: np.ndarray
    phi: np.ndarray  # in (−π, π]
    charge: np.ndarray
    ptype: np.ndarray  # int8, see the constants above
    truth: np.ndarray  # index of the generator particle in the input arrays
    offsets: np.ndarray  # objects of event k: offsets[k]:offsets[k + 1]


def hcal_response(e: np.ndarray) -> np.ndarray:
    """Mean HCAL response R_h(E) of a hadron of true energy `e` [GeV]."""
    e = np.maximum(np.asarray(e, dtype=np.float64), 1e-12)
    return np.minimum(HCAL_RESPONSE_OFFSET + HCAL_RESPONSE_SLOPE * np.log10(e), HCAL_RESPONSE_MAX)


def wrap_phi(phi: np.ndarray) -> np.ndarray:
    """Map angles into (−π, π]."""
    return phi - 2 * np.pi * np.ceil((phi - np.pi) / (2 * np.pi))


def simulate(particles: Particles, rng: np.random.Generator) -> Reconstructed:
    """Reconstructed objects for the stable visible `particles` of a batch of events."""
    n = len(particles.px)
    px, py, pz, e = particles.px, particles.py, particles.pz, particles.e
    pt = np.hypot(px, py)
    eta = pseudorapidity(px, py, pz)
    phi = np.arctan2(py, px)
    abs_id = np.abs(particles.pid)
    charged = particles.charge != 0

    # One draw of each kind per particle, whether used or not: reproducible and vectorised.
    u_track = rng.random(n)
    z_energy = rng.standard_normal(n)
    z_eta = rng.standard_normal(n)
    z_phi = rng.standard_normal(n)

    tracked = (charged & (np.abs(eta) < TRACKER_ETA_MAX) & (pt > TRACK_PT_MIN)
               & (u_track < TRACK_EFFICIENCY))
    to_ecal = ~tracked & ((abs_id == 22) | (abs_id == 11))
    to_hcal = ~tracked & ~to_ecal & (abs_id != 13) & ~np.isin(abs_id, (12, 14, 16))

    # Tracks: smear pT, keep the direction, energy from the true mass.
    sigma_track = np.hypot(TRACK_RESOLUTION_CURVATURE * pt, TRACK_RESOLUTION_CONSTANT)
    pt_track = pt * (1 + sigma_track * z_energy)
    tracked &= pt_track > 0
    # Calorimeters: measured energy, then threshold.
    safe_e = np.maximum(e, 1e-12)
    ecal_e = ECAL_RESPONSE * e * (1 + np.hypot(ECAL_STOCHASTIC / np.sqrt(safe_e), ECAL_CONSTANT)
                                  * z_energy)
    hcal_e = hcal_response(e) * e * (
        1 + np.hypot(HCAL_STOCHASTIC / np.sqrt(safe_e), HCAL_CONSTANT) * z_energy)
    to_ecal &= (np.abs(eta) < ECAL_ETA_MAX) & (ecal_e > ECAL_E_MIN)
    to_hcal &= (np.abs(eta) < HCAL_ETA_MAX) & (hcal_e > HCAL_E_MIN)

    keep = tracked | to_ecal | to_hcal
    calo = to_ecal | to_hcal
    out_pt = np.where(tracked, pt_track, 0.0)
    out_eta = np.where(calo, eta + CALO_ANGULAR_SIGMA * z_eta, eta)
    out_phi = wrap_phi(np.where(calo, phi + CALO_ANGULAR_SIGMA * z_phi, phi))
    calo_e = np.where(to_ecal, ecal_e, hcal_e)
    with np.errstate(over="ignore", invalid="ignore"):
        out_pt = np.where(calo, calo_e / np.cosh(out_eta), out_pt)
        out_pz = out_pt * np.sinh(out_eta)
        out_e = np.where(calo, calo_e, np.sqrt(out_pt**2 + out_pz**2 + particles.mass**2))
    ptype = np.full(n, CHARGED_HADRON, dtype=np.int8)
    ptype[tracked & (abs_id == 11)] = ELECTRON
    ptype[tracked & (abs_id == 13)] = MUON
    ptype[to_ecal] = PHOTON
    ptype[to_hcal] = NEUTRAL_HADRON
    charge = np.where(tracked, particles.charge, 0.0)

    index = np.flatnonzero(keep)
    counts = np.bincount(particles.event[index], minlength=particles.n_events)
    o_pt, o_phi = out_pt[index], out_phi[index]
    return Reconstructed(
        px=o_pt * np.cos(o_phi), py=o_pt * np.sin(o_phi), pz=out_pz[index], e=out_e[index],
        pt=o_pt, eta=out_eta[index], phi=o_phi, charge=charge[index], ptype=ptype[index],
        truth=index, offsets=np.concatenate([[0], np.cumsum(counts)]),
    )
