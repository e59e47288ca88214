"""What a grid-job simulation can be asked for: the per-event models and the modes."""

from __future__ import annotations

MODELS = ("jet_tagger", "jet_energy_regression", "calo_shower_generator")
DEFAULT_MODELS = ("jet_tagger", "jet_energy_regression")
#: The fast-simulation model (its inputs: a job's particles to simulate); the others are
#: jet models, whose inputs offload.physics.jets computes from an event's jets.
SHOWER_MODEL = "calo_shower_generator"
MODES = ("in_process", "offloaded", "offloaded_batched")
DEFAULT_MODES = ("in_process", "offloaded")
OFFLOADED = ("offloaded", "offloaded_batched")
