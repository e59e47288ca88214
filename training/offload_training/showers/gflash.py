"""Reference simulation: GFlash-style parametrised electromagnetic showers.

Grindhammer, Rudowicz, Peters, NIM A290 (1990) 469, and Grindhammer & Peters,
hep-ex/0001020 ("The parameterized simulation of electromagnetic showers in homogeneous
and sampling calorimeters"), homogeneous-medium parametrisation, with the coefficients
of Geant4's GFlash (`GVFlashHomoShowerTuning`). For each shower of energy E (GeV):

1. Longitudinal profile. With y = E/Ec, (ln T, ln α) are drawn from a correlated Gaussian:
   ⟨ln T⟩ = ln(ln y − 0.812), ⟨ln α⟩ = ln(0.81 + (0.458 + 2.26/Z) ln y),
   σ(ln T) = 1/(−1.4 + 1.26 ln y), σ(ln α) = 1/(−0.58 + 0.86 ln y),
   ρ = 0.705 − 0.023 ln y. The energy profile is the Gamma distribution
   dE/dt = E (βt)^(α−1) β e^(−βt) / Γ(α), β = (α − 1)/T, t in X0.
2. Radial profile at depth t: f(r) = p f_C(r) + (1 − p) f_T(r), f(r) = 2rR²/(r² + R²)²,
   r in Molière radii, with τ the depth in units of the shower maximum (as in GFlash,
   t over the shower's own centre of gravity rescaled by the mean ⟨t⟩/T; this carries the
   per-shower fluctuation of T and α into the radial profile):
   R_C = z1 + z2 τ, z1 = 0.0251 + 0.00319 ln E, z2 = 0.1162 − 0.000381 Z;
   R_T = k1 (e^(k3(τ − k2)) + e^(k4(τ − k2))), k1 = 0.659 − 0.00309 Z, k2 = 0.645,
   k3 = −2.59, k4 = 0.3585 + 0.0412 ln E;
   p = p1 exp((p2 − τ)/p3 − exp((p2 − τ)/p3)), p1 = 2.632 − 0.00094 Z,
   p2 = 0.401 + 0.00187 Z, p3 = 1.313 − 0.0686 ln E.
3. Sampling fluctuations through energy spots of E_SPOT = 10 MeV each (σ/E = 10 %/√E):
   the number of spots in each 2 X0 layer is Poisson(E_layer / E_SPOT); each spot gets a
   depth from the longitudinal profile inside the layer (in sub-steps of 0.25 X0, where the
   radial parameters are evaluated, as GFlash does in the middle of each step), a radius
   from f(r) at that depth and a uniform azimuth. Spots beyond 24 X0 or 5 R_M are lost.

Material: PbWO4 (Z_eff = 68.36, Ec = 9.64 MeV; see `geometry.PBWO4`).

Departures from Geant4's GFlash, on purpose: spots carry a fixed energy (so that the
sampling term is exactly 10 %/√E and the voxel counts are Poisson, which is the observation
model of the generator), and their longitudinal distribution is the energy profile itself
(GFlash draws N_spot = 93 ln Z E^0.876 spots from a slightly different Gamma profile).
α is kept ≥ 1.05 (β > 0); at 1 GeV this clips ~10⁻⁴ of the showers.

Two equivalent samplers: `method="spots"` places every spot explicitly, as above;
`method="voxel"` (the default, used for the data sets) draws the spot count of every voxel
directly as a Poisson number with mean Σ_substeps λ_substep · P(radial bin) / 6. Splitting
a Poisson number of spots into independent categories gives independent Poisson counts
per category (the "colouring theorem"), so both have exactly the same distribution given
the shower's (T, α). The voxel sampler's cost does not grow with the energy (about 6×
faster on average over 1–100 GeV, 25× at 100 GeV); `tests/` checks the two agree.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from scipy.special import gammainc

from offload_training.showers import geometry as geo

VERSION = "gflash-v1"
E_SPOT_GEV = 0.010
SUBSTEPS_PER_LAYER = 8
ALPHA_MIN = 1.05
_SUBSTEP_EDGES = np.linspace(0.0, geo.DEPTH_X0, geo.LAYERS * SUBSTEPS_PER_LAYER + 1)
_SUBSTEP_CENTRES = 0.5 * (_SUBSTEP_EDGES[1:] + _SUBSTEP_EDGES[:-1])


@dataclass(frozen=True)
class LongitudinalModel:
    """Means, widths and correlation of (ln T, ln α) at given energies (arrays)."""

    mean_log_t: np.ndarray
    mean_log_alpha: np.ndarray
    sigma_log_t: np.ndarray
    sigma_log_alpha: np.ndarray
    rho: np.ndarray


def longitudinal_model(energy: np.ndarray, material: geo.Material = geo.PBWO4
                       ) -> LongitudinalModel:
    ln_y = np.log(np.asarray(energy, np.float64) / material.critical_energy_gev)
    return LongitudinalModel(
        mean_log_t=np.log(ln_y - 0.812),
        mean_log_alpha=np.log(0.81 + (0.458 + 2.26 / material.z_eff) * ln_y),
        sigma_log_t=1.0 / (-1.4 + 1.26 * ln_y),
        sigma_log_alpha=1.0 / (-0.58 + 0.86 * ln_y),
        rho=0.705 - 0.023 * ln_y,
    )


def sample_longitudinal(energy: np.ndarray, rng: np.random.Generator,
                        material: geo.Material = geo.PBWO4) -> tuple[np.ndarray, np.ndarray]:
    """Per-shower (T in X0, α), correlated as in GFlash."""
    m = longitudinal_model(energy, material)
    g1, g2 = rng.standard_normal((2, len(m.rho)))
    c1, c2 = np.sqrt((1 + m.rho) / 2), np.sqrt((1 - m.rho) / 2)
    t_max = np.exp(m.mean_log_t + m.sigma_log_t * (c1 * g1 + c2 * g2))
    alpha = np.exp(m.mean_log_alpha + m.sigma_log_alpha * (c1 * g1 - c2 * g2))
    return t_max, np.maximum(alpha, ALPHA_MIN)


def radial_parameters(energy: np.ndarray, tau: np.ndarray, material: geo.Material = geo.PBWO4
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R_C, R_T in Molière radii, core weight p) at depth τ; `energy` broadcasts to τ."""
    z = material.z_eff
    ln_e = np.log(energy)
    r_core = (0.0251 + 0.00319 * ln_e) + (0.1162 - 0.000381 * z) * tau
    k1, k2, k3, k4 = 0.659 - 0.00309 * z, 0.645, -2.59, 0.3585 + 0.0412 * ln_e
    r_tail = k1 * (np.exp(k3 * (tau - k2)) + np.exp(k4 * (tau - k2)))
    p1, p2, p3 = 2.632 - 0.00094 * z, 0.401 + 0.00187 * z, 1.313 - 0.0686 * ln_e
    x = (p2 - tau) / p3
    p_core = np.clip(p1 * np.exp(x - np.exp(x)), 0.0, 1.0)
    return r_core, r_tail, p_core


def _substep_profile(energy: np.ndarray, t_max: np.ndarray, alpha: np.ndarray,
                     material: geo.Material) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Expected spots per 0.25 X0 sub-step [n, 96] and the radial parameters there."""
    beta = (alpha - 1.0) / t_max
    cdf = gammainc(alpha[:, None], beta[:, None] * _SUBSTEP_EDGES[None, :])
    spots = (energy / E_SPOT_GEV)[:, None] * np.diff(cdf, axis=1)
    # τ: depth over the shower's own centre of gravity α/β, times the mean ⟨t⟩/T.
    mean_alpha = np.exp(longitudinal_model(energy, material).mean_log_alpha)
    scale = (beta / alpha * mean_alpha / (mean_alpha - 1.0))[:, None]
    tau = _SUBSTEP_CENTRES[None, :] * scale
    return spots, radial_parameters(energy[:, None], tau, material)


def _lorentz_cdf(r: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """∫_0^r 2sR²/(s² + R²)² ds = r²/(r² + R²)."""
    return r**2 / (r**2 + radius**2)


def expected_spots(energy: np.ndarray, t_max: np.ndarray, alpha: np.ndarray,
                   material: geo.Material = geo.PBWO4) -> np.ndarray:
    """Mean spot count per (layer, radial ring), all azimuths together: [n, 12, 8]."""
    spots, (r_core, r_tail, p_core) = _substep_profile(energy, t_max, alpha, material)
    edges = geo.RADIAL_EDGES_RM[None, None, :]
    ring_core = np.diff(_lorentz_cdf(edges, r_core[..., None]), axis=-1)
    ring_tail = np.diff(_lorentz_cdf(edges, r_tail[..., None]), axis=-1)
    rings = p_core[..., None] * ring_core + (1.0 - p_core[..., None]) * ring_tail
    per_substep = spots[..., None] * rings  # [n, 96, 8]
    return per_substep.reshape(len(energy), geo.LAYERS, SUBSTEPS_PER_LAYER, geo.RADIAL).sum(2)


def _simulate_voxel(energy: np.ndarray, t_max: np.ndarray, alpha: np.ndarray,
                    rng: np.random.Generator, material: geo.Material) -> np.ndarray:
    rings = expected_spots(energy, t_max, alpha, material)
    lam = np.repeat(rings[..., None] / geo.ANGULAR, geo.ANGULAR, axis=-1)
    return rng.poisson(lam).astype(np.float32) * np.float32(E_SPOT_GEV)


def _simulate_spots(energy: np.ndarray, t_max: np.ndarray, alpha: np.ndarray,
                    rng: np.random.Generator, material: geo.Material) -> np.ndarray:
    block = 256  # showers at a time: up to a few million spots in memory
    return np.concatenate([
        _place_spots(energy[i:i + block], t_max[i:i + block], alpha[i:i + block], rng, material)
        for i in range(0, len(energy), block)])


def _place_spots(energy: np.ndarray, t_max: np.ndarray, alpha: np.ndarray,
                 rng: np.random.Generator, material: geo.Material) -> np.ndarray:
    n = len(energy)
    spots, (r_core, r_tail, p_core) = _substep_profile(energy, t_max, alpha, material)
    per_step = spots.reshape(n, geo.LAYERS, SUBSTEPS_PER_LAYER)
    layer_mean = per_step.sum(-1)
    counts = rng.poisson(layer_mean)  # [n, 12] spots per layer
    shower = np.repeat(np.arange(n), counts.sum(1))
    layer = np.repeat(np.tile(np.arange(geo.LAYERS), n), counts.ravel())
    # depth inside the layer, at sub-step resolution, from the longitudinal profile
    within = np.cumsum(per_step, -1) / np.maximum(layer_mean, 1e-300)[..., None]
    u = rng.random(len(shower))
    sub = (u[:, None] > within[shower, layer, :-1]).sum(1)
    step = layer * SUBSTEPS_PER_LAYER + sub
    core = rng.random(len(shower)) < p_core[shower, step]
    radius_scale = np.where(core, r_core[shower, step], r_tail[shower, step])
    v = rng.random(len(shower))
    radius = radius_scale * np.sqrt(v / (1.0 - v))
    phi = rng.uniform(0.0, 2 * np.pi, len(shower))
    ring = np.searchsorted(geo.RADIAL_EDGES_RM, radius, side="right") - 1
    sector = np.minimum((phi / (2 * np.pi) * geo.ANGULAR).astype(np.int64), geo.ANGULAR - 1)
    kept = ring < geo.RADIAL  # beyond 5 R_M: lost
    flat = ((shower * geo.LAYERS + layer) * geo.RADIAL + ring) * geo.ANGULAR + sector
    hist = np.bincount(flat[kept], minlength=n * geo.VOXELS)
    return hist.reshape(n, *geo.SHAPE).astype(np.float32) * np.float32(E_SPOT_GEV)


def simulate(energy: np.ndarray, rng: np.random.Generator, *, method: str = "voxel",
             material: geo.Material = geo.PBWO4) -> np.ndarray:
    """Showers of the given incident energies (GeV): float32 [n, 12, 8, 6] in GeV."""
    energy = np.asarray(energy, np.float64)
    t_max, alpha = sample_longitudinal(energy, rng, material)
    samplers: dict[str, Callable] = {"voxel": _simulate_voxel, "spots": _simulate_spots}
    if method not in samplers:
        raise ValueError(f"method must be one of {sorted(samplers)}, not {method!r}")
    return samplers[method](energy, t_max, alpha, rng, material)


def sample_energies(n: int, rng: np.random.Generator,
                    energy_range: tuple[float, float] = geo.ENERGY_RANGE_GEV) -> np.ndarray:
    """Log-uniform incident energies in GeV."""
    low, high = np.log(energy_range[0]), np.log(energy_range[1])
    return np.exp(rng.uniform(low, high, n))


# --- data sets: chunked, seeded per chunk (results do not depend on the worker count) ---

CHUNK = 5000
#: independent seed streams: training, held-out test, and a second held-out reference sample
#: that measures the statistical floor of the metrics (reference against reference)
SPLITS = {"train": 0, "test": 1, "baseline": 2}


def _chunk(task: tuple[int, int, int, int, str]) -> tuple[int, np.ndarray, np.ndarray]:
    index, size, seed, split_id, method = task
    rng = np.random.default_rng(np.random.SeedSequence([seed, split_id, index]))
    energy = sample_energies(size, rng)
    return index, energy.astype(np.float32), simulate(energy, rng, method=method)


def generate(n: int, seed: int, *, split: str = "train", workers: int | None = None,
             method: str = "voxel", progress: bool = True, chunk: int = CHUNK
             ) -> tuple[np.ndarray, np.ndarray]:
    """`n` showers at log-uniform energies: (energy float32 [n] GeV, showers [n,12,8,6]).
    Chunk i of `chunk` showers draws from SeedSequence([seed, split, i]), so the result
    depends on (n, seed, split, chunk), not on the number of worker processes."""
    from tqdm.auto import tqdm

    workers = workers or os.cpu_count() or 1
    tasks = [(i, min(chunk, n - start), seed, SPLITS[split], method)
             for i, start in enumerate(range(0, n, chunk))]
    energy = np.empty(n, np.float32)
    showers = np.empty((n, *geo.SHAPE), np.float32)
    bar = tqdm(total=n, desc=f"GFlash {split} showers", unit="shower", disable=not progress)

    def store(result: tuple[int, np.ndarray, np.ndarray]) -> None:
        index, e, s = result
        energy[index * chunk:index * chunk + len(e)] = e
        showers[index * chunk:index * chunk + len(e)] = s
        bar.update(len(e))

    if workers == 1 or len(tasks) == 1:
        for task in tasks:
            store(_chunk(task))
    else:
        # spawn: the parent may hold torch's thread pools, which fork would copy half-alive
        with get_context("spawn").Pool(min(workers, len(tasks))) as pool:
            for result in pool.imap_unordered(_chunk, tasks):
                store(result)
    bar.close()
    return energy, showers


def cache_path(n: int, seed: int, split: str, method: str = "voxel") -> Path:
    from offload_training.paths import data_dir

    return data_dir() / "showers" / f"{VERSION}-{method}-{split}-n{n}-seed{seed}.npz"


def load_or_generate(n: int, seed: int, *, split: str = "train", workers: int | None = None,
                     progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """`generate`, cached as .npz under `data_dir()/showers` (key: version, split, n, seed)."""
    path = cache_path(n, seed, split)
    if path.exists():
        with np.load(path) as cached:
            return cached["energy"], cached["showers"]
    energy, showers = generate(n, seed, split=split, workers=workers, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + f".{os.getpid()}.partial.npz")
    np.savez(partial, energy=energy, showers=showers)
    partial.replace(path)
    return energy, showers
