"""Training the shower VAE: seeded minibatch Adam on the negative ELBO, cosine learning rate,
the epoch with the best ELBO on a monitoring split of the training data is kept, then the
latent calibration is fitted on the training showers."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from offload_training.showers.generator import (
    LatentCalibration,
    ShowerVAE,
    fit_latent_calibration,
    ring_counts,
)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    latent: int = 8
    hidden: int = 256
    monitor_fraction: float = 0.05  # of the training showers, for choosing the epoch
    seed: int = 0
    #: stop after the epoch that crosses this many seconds (the schedule is not stretched)
    time_budget_s: float | None = None

    def describe(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    model: ShowerVAE
    calibration: LatentCalibration
    history: list[dict]
    best_epoch: int
    seconds: float
    n_fit: int
    n_monitor: int
    threads: int  # torch intra-op threads during training


def _elbo_terms(model: ShowerVAE, counts: torch.Tensor, energy: torch.Tensor,
                batch: int = 8192) -> tuple[float, float]:
    """Mean per-shower Poisson NLL (without log x!) and KL, with a fixed noise draw."""
    nll_sum, kl_sum = 0.0, 0.0
    state = torch.get_rng_state()
    torch.manual_seed(12345)
    with torch.no_grad():
        for i in range(0, len(counts), batch):
            nll, kl = model.loss(counts[i:i + batch], energy[i:i + batch])
            nll_sum += float(nll.sum())
            kl_sum += float(kl.sum())
    torch.set_rng_state(state)
    return nll_sum / len(counts), kl_sum / len(counts)


def train(energy: np.ndarray, showers: np.ndarray, config: TrainConfig,
          progress: bool = True) -> TrainResult:
    """Fit a `ShowerVAE` to reference showers (energy [n] GeV, showers [n, 12, 8, 6] GeV)."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    torch.manual_seed(config.seed)
    counts = torch.from_numpy(ring_counts(showers))
    energies = torch.from_numpy(np.asarray(energy, np.float32))
    order = torch.randperm(len(counts), generator=torch.Generator().manual_seed(config.seed))
    n_monitor = max(1, round(config.monitor_fraction * len(counts)))
    fit, monitor = order[n_monitor:], order[:n_monitor]
    x_fit, e_fit = counts[fit], energies[fit]
    x_mon, e_mon = counts[monitor], energies[monitor]

    model = ShowerVAE(config.latent, config.hidden)
    model.encoder.set_normalisation(x_fit)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate,
                                 weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(x_fit) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    warmup = min(500, total_steps // 10)

    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, rate)
    # Losses are sums over ~10³ spots per shower; scale them to O(1) for Adam's epsilon.
    scale = float(x_fit.sum(1).mean())
    history: list[dict] = []
    best, best_state, best_epoch = math.inf, None, 0
    bar = tqdm(range(config.epochs), desc="training VAE", unit="epoch", disable=not progress)
    generator = torch.Generator().manual_seed(config.seed + 1)
    for epoch in bar:
        model.train()
        permutation = torch.randperm(len(x_fit), generator=generator)
        total = 0.0
        for i in range(0, len(x_fit), config.batch_size):
            batch = permutation[i:i + config.batch_size]
            nll, kl = model.loss(x_fit[batch], e_fit[batch])
            loss = (nll + kl).mean() / scale
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimiser.step()
            schedule.step()
            total += loss.item() * len(batch)
        model.eval()
        nll_mon, kl_mon = _elbo_terms(model, x_mon, e_mon)
        record = {"epoch": epoch + 1, "train_loss": total / len(x_fit) * scale,
                  "monitor_nll": nll_mon, "monitor_kl": kl_mon,
                  "monitor_neg_elbo": nll_mon + kl_mon,
                  "seconds": time.perf_counter() - start}
        history.append(record)
        if record["monitor_neg_elbo"] < best:
            best, best_epoch = record["monitor_neg_elbo"], epoch + 1
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(nll=f"{nll_mon:.1f}", kl=f"{kl_mon:.2f}")
        if config.time_budget_s is not None and record["seconds"] > config.time_budget_s:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    calibration = fit_latent_calibration(model, x_fit, e_fit)
    return TrainResult(model, calibration, history, best_epoch, time.perf_counter() - start,
                       len(x_fit), n_monitor, torch.get_num_threads())
