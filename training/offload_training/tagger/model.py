"""A compact ParticleNet-style top tagger (EdgeConv on a particle cloud).

ParticleNet (Qu & Gouskos, arXiv:1902.08570) treats a jet as an unordered cloud of
particles: each EdgeConv block links every particle to its k nearest neighbours, applies a
shared MLP to (x_i, x_j − x_i) and averages over the neighbours; the second block rebuilds
the graph in the learned feature space. This one is smaller so that it trains on two CPU
cores in minutes: by default one EdgeConv block on the (delta_eta, delta_phi) graph of the
64 highest-pt constituents, then a per-particle layer and a masked mean. (A second,
dynamic block was measured 8x slower to train on the CPU: the gather's backward pass.)
Padding is masked everywhere: it is never a neighbour and never pooled. Exportable to ONNX (topk +
GatherElements).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from offload.physics.jets import CONSTITUENT_FEATURES, MAX_CONSTITUENTS

#: Far enough that a padding slot is never a real particle's neighbour.
_FAR = 1e9


def nearest_neighbours(coordinates: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [B, P, k] of each particle's k nearest real particles (itself excluded)."""
    # Squared distances from explicit differences, not |a|² − 2ab + |b|²: the expanded form
    # cancels badly for close particles, and its matrix product is summed in a different
    # order by torch and onnxruntime, which flips near-ties in the neighbour choice between
    # training and serving.
    difference = coordinates.unsqueeze(2) - coordinates.unsqueeze(1)
    distance = (difference * difference).sum(-1)
    distance = distance + (1 - mask.transpose(1, 2)) * _FAR
    return distance.topk(k + 1, dim=-1, largest=False).indices[:, :, 1:]


def gather_neighbours(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values [B, P, C] at index [B, P, k] -> [B, P, k, C]."""
    batch, particles, k = index.shape
    flat = index.reshape(batch, particles * k, 1).expand(-1, -1, values.shape[-1])
    return torch.gather(values, 1, flat).reshape(batch, particles, k, values.shape[-1])


class EdgeConv(nn.Module):
    def __init__(self, k: int, in_channels: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.k = k
        layers: list[nn.Module] = []
        width = 2 * in_channels
        for out in channels:
            layers += [nn.Linear(width, out), nn.ReLU()]
            width = out
        self.mlp = nn.Sequential(*layers)
        self.shortcut = nn.Linear(in_channels, channels[-1])

    def forward(self, points: torch.Tensor, features: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        # points [B, P, D], features [B, P, C], mask [B, P, 1]
        gathered = gather_neighbours(features, nearest_neighbours(points, mask, self.k))
        centre = features.unsqueeze(2).expand(-1, -1, self.k, -1)
        edges = torch.cat([centre, gathered - centre], dim=-1)
        aggregated = self.mlp(edges).mean(dim=2)
        return torch.relu(aggregated + self.shortcut(features)) * mask


class ParticleNetLite(nn.Module):
    """(points, features, mask) as made by `offload.physics.jets.tagger_inputs` → logit."""

    def __init__(self, *, k: int = 12, particles: int = 64,
                 blocks: tuple[tuple[int, ...], ...] = ((32, 32),),
                 pointwise: int = 64, head: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        n_features = len(CONSTITUENT_FEATURES)
        if not 0 < particles <= MAX_CONSTITUENTS:
            raise ValueError(f"particles must be in 1..{MAX_CONSTITUENTS}")
        self.particles = particles
        # Feature standardisation, fitted on the training set (see fit_standardisation).
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_scale", torch.ones(n_features))
        convs = []
        width = n_features
        for channels in blocks:
            convs.append(EdgeConv(k, width, channels))
            width = channels[-1]
        self.convs = nn.ModuleList(convs)
        # A per-particle layer after the graph blocks: cheap width before pooling.
        self.pointwise = nn.Sequential(nn.Linear(width, pointwise), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(pointwise, head), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(head, 1))

    def fit_standardisation(self, features: torch.Tensor, mask: torch.Tensor) -> None:
        real = features[mask[..., 0] > 0]
        self.feature_mean.copy_(real.mean(0))
        self.feature_scale.copy_(real.std(0).clamp(min=1e-3))

    def forward(self, points: torch.Tensor, features: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        points = points[:, : self.particles]
        mask = mask[:, : self.particles]
        x = (features[:, : self.particles] - self.feature_mean) / self.feature_scale * mask
        for index, conv in enumerate(self.convs):
            # The first graph is built on (delta_eta, delta_phi), later ones on learned features.
            x = conv(points if index == 0 else x, x, mask)
        x = self.pointwise(x) * mask
        pooled = x.sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)


class TopProbability(nn.Module):
    """What is exported and served: the tagger with a sigmoid, output [B, 1] in [0, 1]."""

    def __init__(self, tagger: ParticleNetLite) -> None:
        super().__init__()
        self.tagger = tagger

    def forward(self, points: torch.Tensor, features: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.tagger(points, features, mask))


def export_onnx(model: nn.Module, path: Path, *, real_particles: int = 0) -> None:
    """The tagger `model` as jet_tagger's ONNX artifact: TopProbability around it, opset 17
    (onnxruntime ≥ 1.12; NGC 24.10 ships 1.19.2), a dynamic batch, the interface's inputs.
    `real_particles`: how many constituents the traced example marks as present."""
    from offload_training.tagger.interface import INPUTS, OUTPUTS

    example = tuple(torch.zeros((2, *t.dims)) for t in INPUTS)
    example[2][:, :real_particles] = 1.0  # the mask
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(TopProbability(model).eval(), example, str(path),
                      input_names=[t.name for t in INPUTS],
                      output_names=[t.name for t in OUTPUTS],
                      dynamic_axes={t.name: {0: "batch"} for t in (*INPUTS, *OUTPUTS)},
                      opset_version=17, dynamo=False)
