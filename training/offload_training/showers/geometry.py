"""The voxelised calorimeter the showers are recorded in.

A homogeneous PbWO4 block (the CMS ECAL crystal material), read out in cylindrical voxels
around the shower axis of a particle at normal incidence through the centre:

- 12 layers of 2 X0 each (24 X0 deep); energy beyond 24 X0 leaks out the back,
- 8 radial bins with edges in Molière radii; energy beyond 5 R_M leaks out the side,
- 6 azimuthal bins of 60°.

Shower tensors are float32 `[n, LAYERS, RADIAL, ANGULAR]` = `[n, 12, 8, 6]` in GeV.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Material:
    """What the GFlash parametrisation needs of a homogeneous medium."""

    name: str
    z_eff: float  # mass-weighted mean atomic number
    critical_energy_gev: float  # Ec (PDG, electrons)
    radiation_length_cm: float  # X0
    moliere_radius_cm: float  # R_M


# PDG "Atomic and nuclear properties" for lead tungstate; Z_eff = Σ w_i Z_i with mass
# fractions Pb 0.4553, W 0.4040, O 0.1406 (this is how GFlash averages Z over a compound).
PBWO4 = Material("PbWO4", z_eff=68.36, critical_energy_gev=9.64e-3,
                 radiation_length_cm=0.8903, moliere_radius_cm=1.959)

LAYERS = 12
LAYER_DEPTH_X0 = 2.0
RADIAL = 8
ANGULAR = 6
VOXELS = LAYERS * RADIAL * ANGULAR
SHAPE = (LAYERS, RADIAL, ANGULAR)

#: radial bin edges in Molière radii (fine in the core, coarse in the halo)
RADIAL_EDGES_RM = np.array([0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0])
#: layer boundaries in X0
LAYER_EDGES_X0 = np.arange(LAYERS + 1) * LAYER_DEPTH_X0
ANGULAR_EDGES_RAD = np.linspace(0.0, 2 * np.pi, ANGULAR + 1)

DEPTH_X0 = float(LAYER_EDGES_X0[-1])
RADIUS_RM = float(RADIAL_EDGES_RM[-1])
#: layer centres (X0) and radial bin centres (R_M), used by the observables
LAYER_CENTRES_X0 = 0.5 * (LAYER_EDGES_X0[1:] + LAYER_EDGES_X0[:-1])
RADIAL_CENTRES_RM = 0.5 * (RADIAL_EDGES_RM[1:] + RADIAL_EDGES_RM[:-1])

#: incident energy range of the data sets, GeV (log-uniform)
ENERGY_RANGE_GEV = (1.0, 100.0)


@dataclass(frozen=True)
class Geometry:
    """The whole readout in one value, for model cards and metrics records."""

    material: Material = PBWO4
    layers: int = LAYERS
    layer_depth_x0: float = LAYER_DEPTH_X0
    radial_edges_rm: tuple[float, ...] = tuple(RADIAL_EDGES_RM.tolist())
    angular_bins: int = ANGULAR

    def describe(self) -> dict:
        m = self.material
        return {
            "material": m.name, "z_eff": m.z_eff,
            "critical_energy_MeV": m.critical_energy_gev * 1e3,
            "X0_cm": m.radiation_length_cm, "R_M_cm": m.moliere_radius_cm,
            "layers": self.layers, "layer_depth_X0": self.layer_depth_x0,
            "radial_edges_R_M": list(self.radial_edges_rm), "angular_bins": self.angular_bins,
            "shape": [self.layers, len(self.radial_edges_rm) - 1, self.angular_bins],
            "units": "GeV",
        }
