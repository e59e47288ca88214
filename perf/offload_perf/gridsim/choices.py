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


def split_versions(entries: list[str]) -> dict[str, str | None]:
    """`["jet_tagger:1", "jet_energy_regression"]` -> {name: version or None}, in order."""
    versions: dict[str, str | None] = {}
    for entry in entries:
        name, _, version = entry.partition(":")
        versions[name] = version or None
    return versions
