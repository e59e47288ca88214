"""`max_batch_size` from timings (`offload_training.export.choose_max_batch_size`): the rule
on made-up cost curves, and each committed model's config and card agreeing with the rule
applied to the timings its own pipeline recorded."""

from __future__ import annotations

import json

import pytest
from helpers import ROOT

from offload_server.model_spec import read_config
from offload_training.export import (
    MAX_BATCH_RULE,
    MIN_BATCH_MS,
    BatchTiming,
    choose_max_batch_size,
)

REPOSITORY = ROOT / "model_repository"
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _timings(ms_per_batch) -> list[BatchTiming]:
    return [BatchTiming(b, ms_per_batch(b) / 1e3) for b in BATCHES]


@pytest.mark.parametrize(("name", "ms_per_batch", "expected"), [
    # a fixed cost per call, then linear: throughput levels off at 64 (≥ 90 % of the best)
    ("overhead then linear", lambda b: 1.0 + 0.01 * b, 2 * 128),
    # the same cost per row at every batch: the smallest batch computing ≥ MIN_BATCH_MS
    ("flat, 0.3 ms per row", lambda b: 0.3 * b, 2 * 8),
    ("flat, 5 ms per row", lambda b: 5.0 * b, 2 * 1),
    # throughput best at a middle batch and falling after it (caches): up to it, not beyond
    ("peaked", lambda b: 0.05 * b * (1 + abs(b - 32) / 32), 2 * 32),
    # nothing reaches the floor: the largest batch with enough throughput, within the range
    ("all fast", lambda b: 0.001 * b, 256),
])
def test_the_rule_on_cost_curves(name, ms_per_batch, expected):
    assert choose_max_batch_size(_timings(ms_per_batch)) == expected, name


def test_a_flat_cost_is_not_served_one_row_at_a_time():
    """A model whose cost per row does not fall with the batch (the rule without a floor
    would pick 2 from noise) still gets batches that outweigh a request's own cost."""
    timings = _timings(lambda b: 0.31 * b)
    chosen = choose_max_batch_size(timings)
    assert chosen >= 2 * MIN_BATCH_MS / 0.31  # at least twice the batch reaching the floor
    assert choose_max_batch_size(timings, min_batch_ms=0) == 2


def _recorded_timings(model: str) -> tuple[int, list[BatchTiming]]:
    metrics = json.loads((REPOSITORY / model / "metrics.json").read_text())
    rows = (metrics["speed"]["batch_timings"] if "speed" in metrics
            else metrics["export"]["timings"])
    return (metrics["export"]["max_batch_size"],
            [BatchTiming(r["batch"], r["ms_per_batch"] / 1e3) for r in rows])


@pytest.mark.parametrize("model", ["calo_shower_generator", "jet_energy_regression",
                                   "jet_tagger"])
def test_each_committed_config_follows_the_rule_on_its_recorded_timings(model):
    recorded, timings = _recorded_timings(model)
    assert read_config(REPOSITORY / model).max_batch_size == recorded
    assert choose_max_batch_size(timings) == recorded
    assert max(t.batch for t in timings) >= recorded
    card = " ".join((REPOSITORY / model / "model_card.md").read_text().split())
    assert " ".join(MAX_BATCH_RULE.split()) in card
