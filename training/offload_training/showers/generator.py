"""The generator: a conditional VAE with a Poisson observation model, and its serving module.

The reference showers are, given a shower's longitudinal parameters, independent Poisson
counts of 10 MeV spots per voxel, with azimuthally symmetric means (normal incidence). So:

- the decoder maps (latent z, condition c = log10(E / 10 GeV)) to the fractions of the
  incident energy's spots expected in each (layer, radial ring), plus one leakage class,
  through a softmax: λ_ring = (E / E_SPOT) · softmax(·)_ring, λ_voxel = λ_ring / 6.
  The mean energy scales with E by construction and containment is learned as a fraction;
- the likelihood is Poisson per voxel. Summed over the 6 azimuthal voxels of a ring it is
  the Poisson likelihood of the ring count (up to a constant), so the encoder reads the
  96 ring counts, which are sufficient statistics for azimuthally symmetric means;
- the loss is the negative ELBO: Poisson NLL + KL(q(z|x, c) ‖ N(0, 1)).

`ShowerSampler` is what is served. It maps the standard-normal `latent` input through a
latent calibration, decodes λ, and turns given uniform noise into Poisson counts by the
exact inverse CDF (λ ≤ 30) or the continuity-corrected normal approximation (λ > 30), so
its output is a deterministic function of its inputs.

Latent calibration (ex-post density estimation, as in Ghosh et al., "From variational to
deterministic autoencoders", ICLR 2020): the KL term does not make the aggregate posterior
exactly N(0, 1), least at high energy where the likelihood of ~10⁴ spots dominates (a
shift of ~0.15 σ in one latent direction was measured at 50–100 GeV, which made the early
layers ~10 % too bright). After training, a Gaussian with energy-dependent mean m(c) and
Cholesky factor L(c) is fitted to the aggregate posterior of the training showers on a
grid in c (Gaussian kernel weights), and the sampler uses z = m(c) + L(c) ε, linearly
interpolated in c. The served input stays ε ~ N(0, 1).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from offload_training.showers import geometry as geo
from offload_training.showers.gflash import E_SPOT_GEV

RINGS = geo.LAYERS * geo.RADIAL
LATENT = 8
SMALL_LAMBDA = 30.0  # exact inverse CDF up to here, normal approximation above
#: largest float32 below 1: the uniform noise is clamped to [0, U_MAX]
U_MAX = 1.0 - 2.0**-24


def condition(energy: torch.Tensor) -> torch.Tensor:
    """log10(E / 10 GeV): −1 … 1 over the 1–100 GeV training range."""
    return torch.log10(energy / 10.0)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class Decoder(nn.Module):
    """(condition [B, 1], latent [B, Z]) -> log fractions [B, RINGS + 1] (last: leakage)."""

    def __init__(self, latent: int = LATENT, hidden: int = 256, depth: int = 3) -> None:
        super().__init__()
        self.net = _mlp([latent + 1, *[hidden] * depth, RINGS + 1])

    def forward(self, cond: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.net(torch.cat([cond, latent], dim=1)), dim=1)


class Encoder(nn.Module):
    """(ring counts [B, RINGS], condition [B, 1]) -> (mean, log variance) of q(z | x, c)."""

    def __init__(self, latent: int = LATENT, hidden: int = 256, depth: int = 2) -> None:
        super().__init__()
        self.net = _mlp([RINGS + 1, *[hidden] * depth, 2 * latent])
        self.register_buffer("feature_mean", torch.zeros(RINGS))
        self.register_buffer("feature_std", torch.ones(RINGS))

    def set_normalisation(self, counts: torch.Tensor) -> None:
        features = torch.log1p(counts)
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0).clamp_min(1e-3))

    def forward(self, counts: torch.Tensor, cond: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        features = (torch.log1p(counts) - self.feature_mean) / self.feature_std
        mean, log_var = self.net(torch.cat([features, cond], dim=1)).chunk(2, dim=1)
        return mean, log_var.clamp(-12.0, 6.0)


class ShowerVAE(nn.Module):
    def __init__(self, latent: int = LATENT, hidden: int = 256) -> None:
        super().__init__()
        self.latent = latent
        self.encoder = Encoder(latent, hidden)
        self.decoder = Decoder(latent, hidden)

    def loss(self, counts: torch.Tensor, energy: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-shower Poisson NLL of the ring counts (without the log x! constant) and KL,
        both [B]. `counts` [B, RINGS] spot counts, `energy` [B] GeV."""
        cond = condition(energy)[:, None]
        mean, log_var = self.encoder(counts, cond)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var)
        log_fraction = self.decoder(cond, z)
        log_lam = torch.log(energy / E_SPOT_GEV)[:, None] + log_fraction[:, :RINGS]
        nll = (torch.exp(log_lam) - counts * log_lam).sum(1)
        kl = 0.5 * (mean**2 + torch.exp(log_var) - 1.0 - log_var).sum(1)
        return nll, kl


@dataclass(frozen=True)
class LatentCalibration:
    """z = mean(c) + chol(c) ε on a grid of conditions c (linear interpolation between)."""

    grid: torch.Tensor  # [K], equally spaced
    mean: torch.Tensor  # [K, Z]
    chol: torch.Tensor  # [K, Z, Z], lower triangular

    @staticmethod
    def identity(latent: int = LATENT) -> LatentCalibration:
        return LatentCalibration(torch.tensor([-1.0, 1.0]), torch.zeros(2, latent),
                                 torch.eye(latent).expand(2, latent, latent).clone())

    def describe(self) -> dict:
        return {
            "grid_points": len(self.grid),
            "max_abs_mean": float(self.mean.abs().max()),
            "diagonal_range": [float(torch.diagonal(self.chol, dim1=1, dim2=2).min()),
                               float(torch.diagonal(self.chol, dim1=1, dim2=2).max())],
        }


def fit_latent_calibration(model: ShowerVAE, counts: torch.Tensor, energy: torch.Tensor,
                           points: int = 21, batch: int = 8192) -> LatentCalibration:
    """Mean and covariance of the aggregate posterior q(z | c) = ⟨q(z | x, c)⟩ over the
    showers near each grid point c_k (Gaussian weights of width one grid step): mean
    ⟨μ⟩, covariance ⟨μμᵀ⟩ + ⟨diag σ²⟩ − ⟨μ⟩⟨μ⟩ᵀ."""
    model.eval()
    with torch.no_grad():
        cond = condition(energy)
        parts = [model.encoder(counts[i:i + batch], cond[i:i + batch, None])
                 for i in range(0, len(counts), batch)]
    mu = torch.cat([p[0] for p in parts]).double()
    var = torch.exp(torch.cat([p[1] for p in parts])).double()
    grid = torch.linspace(-1.0, 1.0, points, dtype=torch.float64)
    step = float(grid[1] - grid[0])
    eye = torch.eye(mu.shape[1], dtype=torch.float64)
    means, chols = [], []
    for c_k in grid:
        w = torch.exp(-0.5 * ((cond.double() - c_k) / step) ** 2)
        w = w / w.sum()
        mean = w @ mu
        second = (mu * w[:, None]).T @ mu + torch.diag(w @ var)
        covariance = second - torch.outer(mean, mean)
        means.append(mean)
        chols.append(torch.linalg.cholesky(covariance + 1e-6 * eye))
    return LatentCalibration(grid.float(), torch.stack(means).float(),
                             torch.stack(chols).float())


def ring_counts(showers: np.ndarray) -> np.ndarray:
    """Spot counts per (layer, radial ring), float32 [n, RINGS], from showers in GeV."""
    return np.rint(showers.sum(axis=3) / E_SPOT_GEV).reshape(len(showers), RINGS).astype(
        np.float32)


def poisson_inverse_cdf(lam: torch.Tensor, uniform: torch.Tensor, small: float = SMALL_LAMBDA,
                        u_max: float = U_MAX) -> torch.Tensor:
    """Poisson(λ) numbers from uniform noise u, elementwise, computed in float64.

    λ ≤ `small`: the exact inverse CDF, X = #{k ≥ 0 : F(k) < u}, by the pmf recursion
    p(k) = p(k−1) λ/k, carried on only for the entries whose F(k) is still below u (the
    work is about one step per spot). λ > `small`: X = max(0, ⌊λ + √λ Φ⁻¹(u) + ½⌋) with
    Φ⁻¹(u) = √2 erfinv(2u − 1). u is clamped to [0, u_max]."""
    lam = lam.to(torch.float64)
    u = uniform.to(torch.float64).clamp(0.0, u_max)
    flat_lam, flat_u = lam.reshape(-1), u.reshape(-1)
    is_small = flat_lam <= small
    flat_out = torch.zeros_like(flat_lam)
    large = torch.nonzero(~is_small).reshape(-1)
    rate = flat_lam[large]
    z = math.sqrt(2.0) * torch.erfinv(2.0 * flat_u[large] - 1.0)
    flat_out[large] = torch.floor(rate + torch.sqrt(rate) * z + 0.5).clamp_min(0.0)
    p0 = torch.exp(-flat_lam)
    index = torch.nonzero(is_small & (p0 < flat_u)).reshape(-1)  # F(0) < u: X ≥ 1
    # columns: λ, u, p(k), F(k)
    state = torch.stack([flat_lam[index], flat_u[index], p0[index], p0[index]], 1)
    k = 1
    while index.numel() > 0 and k < 1000:
        flat_out[index] = float(k)  # every entry still here has X ≥ k
        pmf = state[:, 2] * state[:, 0] / k
        state[:, 2] = pmf
        state[:, 3] += pmf
        keep = torch.nonzero(state[:, 3] < state[:, 1]).reshape(-1)
        state = state.index_select(0, keep)
        index = index.index_select(0, keep)
        k += 1
    return flat_out.reshape(lam.shape)


class ShowerSampler(nn.Module):
    """The served model: forward(energy [B, 1] GeV, latent [B, Z] ~ N(0, 1),
    uniform [B, 576] ~ U(0, 1)) -> shower [B, 12, 8, 6] GeV, deterministic in its inputs."""

    def __init__(self, decoder: Decoder, calibration: LatentCalibration | None = None) -> None:
        super().__init__()
        self.decoder = decoder
        calibration = calibration or LatentCalibration.identity(decoder.net[0].in_features - 1)
        self.register_buffer("calibration_grid", calibration.grid.clone())
        self.register_buffer("calibration_mean", calibration.mean.clone())
        self.register_buffer("calibration_chol", calibration.chol.clone())
        self.e_spot = E_SPOT_GEV
        self.small = SMALL_LAMBDA
        self.u_max = U_MAX
        self.rings = RINGS
        self.shape = (geo.LAYERS, geo.RADIAL, geo.ANGULAR)

    def calibrated_latent(self, cond: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """z = m(c) + L(c) ε, linear interpolation on the grid, clamped at its ends."""
        grid = self.calibration_grid
        points = grid.shape[0]
        step = (grid[points - 1] - grid[0]) / (points - 1)
        position = ((cond.reshape(-1) - grid[0]) / step).clamp(0.0, points - 1.0)
        low = position.floor().to(torch.int64).clamp(0, points - 2)
        weight = (position - low.to(position.dtype)).unsqueeze(1)
        mean = (1.0 - weight) * self.calibration_mean[low] + weight * self.calibration_mean[low + 1]
        w3 = weight.unsqueeze(2)
        chol = (1.0 - w3) * self.calibration_chol[low] + w3 * self.calibration_chol[low + 1]
        return mean + torch.bmm(chol, latent.unsqueeze(2)).squeeze(2)

    def mean_counts(self, energy: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """Expected spot counts λ per voxel, [B, 576] (layer, radial, angular order), for
        standard-normal `latent`."""
        e = energy.reshape(-1, 1)
        cond = torch.log10(e / 10.0)
        log_fraction = self.decoder(cond, self.calibrated_latent(cond, latent))
        angular = self.shape[2]
        rings = e / self.e_spot * torch.exp(log_fraction[:, :self.rings]) / float(angular)
        return rings.repeat_interleave(angular, dim=1)

    def forward(self, energy: torch.Tensor, latent: torch.Tensor,
                uniform: torch.Tensor) -> torch.Tensor:
        lam = self.mean_counts(energy, latent)
        counts = poisson_inverse_cdf(lam, uniform, self.small, self.u_max)
        shower = (counts * self.e_spot).to(torch.float32)
        return shower.reshape(-1, self.shape[0], self.shape[1], self.shape[2])


def draw_noise(n: int, seed: int, latent: int = LATENT) -> tuple[np.ndarray, np.ndarray]:
    """The noise contract: `latent` float32 [n, Z] standard normal, then `uniform` float32
    [n, 576] uniform in [0, 1), both from numpy's PCG64 `default_rng(seed)`."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, latent), dtype=np.float32),
            rng.random((n, geo.VOXELS), dtype=np.float32))


def script(decoder: Decoder, calibration: LatentCalibration | None = None
           ) -> torch.jit.ScriptModule:
    """The TorchScript serving module, for `1/model.pt`."""
    return torch.jit.script(ShowerSampler(decoder, calibration).eval())


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
