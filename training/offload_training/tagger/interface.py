"""What `jet_tagger` takes and gives, the same for every version (so that
`offload.physics.jets.tagger_inputs` serves them all)."""

from __future__ import annotations

from offload.physics.jets import CONSTITUENT_FEATURES, MAX_CONSTITUENTS
from offload_training.export import Tensor

NAME = "jet_tagger"
INPUTS = (
    Tensor("points", "TYPE_FP32", (MAX_CONSTITUENTS, 2)),
    Tensor("features", "TYPE_FP32", (MAX_CONSTITUENTS, len(CONSTITUENT_FEATURES))),
    Tensor("mask", "TYPE_FP32", (MAX_CONSTITUENTS, 1)),
)
OUTPUTS = (Tensor("top_probability", "TYPE_FP32", (1,)),)
