"""`jet_tagger` version 2: a ParticleNet-Lite-class tagger (dynamic-graph EdgeConv).

ParticleNet (Qu & Gouskos, Phys. Rev. D 101 (2020) 056019, arXiv:1902.08570) treats a jet as
an unordered cloud of particles. Each EdgeConv block links every particle to its k nearest
neighbours, runs a shared MLP on every edge (x_i, x_j − x_i) and averages over the
neighbours; the first block's graph is built on the (Δη, Δφ) coordinates, every later
block's on the previous block's output, so the graph is recomputed in the learned feature
space (a dynamic graph). The blocks' outputs are concatenated per particle ("fusion"),
averaged over the particles and classified by a small head. ParticleNet-Lite is two blocks
(k = 7; channels (32, 32, 32) and (64, 64, 64)); the sizes here are chosen by measured
training time on two CPU cores (see the model card).

Two implementation choices make the same network ~2× cheaper to train on a CPU, with the
same function:

- the edge MLP's first layer on the concatenation (x_i, x_j − x_i) is linear, so it is
  W_c x_i + W_n x_j with W_c = W_1 − W_2, W_n = W_2: both are computed per particle and only
  the neighbour's term is gathered per edge (the gather moves `channels[0]` numbers per
  edge instead of the input's, and the first matrix product runs P times instead of P·k);
- distances for the neighbour search are computed from explicit differences, not
  |a|² − 2ab + |b|²: the expanded form cancels badly for close particles, and torch and
  onnxruntime sum its matrix product in different orders, which flips near-ties in the
  neighbour choice between training and serving.

Padding (mask 0) is never a neighbour of a real particle (its distance is pushed far away),
never counted in a neighbour mean and never pooled. Exports to ONNX with TopK, Gather and
MatMul only (opset 17: ONNX Runtime ≥ 1.12, NGC 24.10's 1.19.2 included).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from offload.physics.jets import CONSTITUENT_FEATURES, MAX_CONSTITUENTS
from offload_training.tagger.model import gather_neighbours, nearest_neighbours


@dataclass(frozen=True)
class Architecture:
    """The sizes of the network (recorded in metrics.json and the card)."""

    particles: int = 64  # the highest-pt constituents used (the inputs carry 128)
    k: int = 12  # neighbours per particle in every block
    blocks: tuple[tuple[int, ...], ...] = ((32, 32, 32), (64, 64, 64))
    fusion: int = 128  # per-particle width after concatenating the blocks' outputs
    head: int = 128
    dropout: float = 0.1

    def describe(self) -> str:
        blocks = ", ".join("(" + ", ".join(str(c) for c in b) + ")" for b in self.blocks)
        return (f"{len(self.blocks)} EdgeConv blocks (k = {self.k}; channels {blocks}), "
                f"fusion {sum(b[-1] for b in self.blocks)}→{self.fusion}, head "
                f"{self.fusion}→{self.head}→1, {self.particles} constituents")

    def as_dict(self) -> dict:
        return asdict(self)


class EdgeConvBlock(nn.Module):
    def __init__(self, k: int, in_channels: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.k = k
        first = channels[0]
        self.centre = nn.Linear(in_channels, first)  # (W_1 − W_2) x_i + b
        self.neighbour = nn.Linear(in_channels, first, bias=False)  # W_2 x_j
        self.first_norm = nn.BatchNorm1d(first)
        layers: list[nn.Module] = []
        width = first
        for out in channels[1:]:
            layers += [nn.Linear(width, out, bias=False), nn.BatchNorm1d(out)]
            width = out
        self.layers = nn.ModuleList(layers)
        self.shortcut = nn.Linear(in_channels, width, bias=False)
        self.shortcut_norm = nn.BatchNorm1d(width)

    @staticmethod
    def _norm(norm: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return norm(x.reshape(-1, shape[-1])).reshape(shape)

    def forward(self, coordinates: torch.Tensor, x: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        # coordinates [B, P, D] (the graph's space), x [B, P, C], mask [B, P, 1]
        index = nearest_neighbours(coordinates.detach(), mask, self.k)
        neighbour_mask = gather_neighbours(mask, index).transpose(2, 3)  # [B, P, 1, k]
        edges = self.centre(x).unsqueeze(2) + gather_neighbours(self.neighbour(x), index)
        edges = torch.relu(self._norm(self.first_norm, edges))
        for linear, norm in zip(self.layers[0::2], self.layers[1::2], strict=True):
            edges = torch.relu(self._norm(norm, linear(edges)))
        # The mean over real neighbours as one batched product (no masked copy of the edges).
        summed = torch.matmul(neighbour_mask, edges).squeeze(2)
        aggregated = summed / neighbour_mask.sum(3).clamp(min=1.0)
        shortcut = self._norm(self.shortcut_norm, self.shortcut(x))
        return torch.relu(aggregated + shortcut) * mask


class ParticleNet(nn.Module):
    """(points, features, mask) as made by `offload.physics.jets.tagger_inputs` → logit."""

    def __init__(self, architecture: Architecture | None = None) -> None:
        super().__init__()
        self.architecture = architecture = architecture or Architecture()
        if not 0 < architecture.particles <= MAX_CONSTITUENTS:
            raise ValueError(f"particles must be in 1..{MAX_CONSTITUENTS}")
        n_features = len(CONSTITUENT_FEATURES)
        # Feature standardisation, fitted on the training set (see fit_standardisation).
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_scale", torch.ones(n_features))
        blocks, width = [], n_features
        for channels in architecture.blocks:
            blocks.append(EdgeConvBlock(architecture.k, width, channels))
            width = channels[-1]
        self.blocks = nn.ModuleList(blocks)
        concatenated = sum(channels[-1] for channels in architecture.blocks)
        self.fusion = nn.Linear(concatenated, architecture.fusion, bias=False)
        self.fusion_norm = nn.BatchNorm1d(architecture.fusion)
        self.head = nn.Sequential(nn.Linear(architecture.fusion, architecture.head), nn.ReLU(),
                                  nn.Dropout(architecture.dropout),
                                  nn.Linear(architecture.head, 1))

    def fit_standardisation(self, features: torch.Tensor, mask: torch.Tensor) -> None:
        real = features[:, : self.architecture.particles][mask[:, : self.architecture.particles,
                                                               0] > 0]
        self.feature_mean.copy_(real.mean(0))
        self.feature_scale.copy_(real.std(0).clamp(min=1e-3))

    def forward(self, points: torch.Tensor, features: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        particles = self.architecture.particles
        points, mask = points[:, :particles], mask[:, :particles]
        x = (features[:, :particles] - self.feature_mean) / self.feature_scale * mask
        outputs = []
        for index, block in enumerate(self.blocks):
            # The first graph on (Δη, Δφ), every later one on the previous block's output.
            x = block(points if index == 0 else x, x, mask)
            outputs.append(x)
        fused = self.fusion(torch.cat(outputs, dim=-1))
        shape = fused.shape
        fused = torch.relu(self.fusion_norm(fused.reshape(-1, shape[-1])).reshape(shape)) * mask
        pooled = fused.sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)
