"""What a loaded artifact offers, and how it is compared with its config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from offload_server.model_spec import ModelSpec, TensorSpec, shapes_compatible


@dataclass(frozen=True)
class ArtifactTensor:
    """A tensor as the artifact declares it. `dtype` is a numpy dtype name and `shape`
    includes the batch dimension; either is None where the format does not say."""

    name: str
    dtype: str | None = None
    shape: tuple[int, ...] | None = None

    def describe(self) -> str:
        shape = "[?]" if self.shape is None else str([d if d >= 0 else "?" for d in self.shape])
        return f"{self.dtype or '?'}{shape}".replace("'", "")


@dataclass(frozen=True)
class Signature:
    inputs: tuple[ArtifactTensor, ...]
    outputs: tuple[ArtifactTensor, ...] | None  # None: only known once the model runs


class Runner(Protocol):
    """A loaded model: one call per (merged) batch."""

    signature: Signature

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs and outputs keyed by the config's tensor names."""
        ...


def signature_problems(spec: ModelSpec, signature: Signature, artifact: str) -> list[str]:
    """Every disagreement between the config and the artifact, one sentence each."""
    problems: list[str] = []
    found_inputs = {t.name: t for t in signature.inputs}
    for tensor in spec.inputs:
        problems += _tensor_problems(spec, "input", tensor, found_inputs.get(tensor.name),
                                     found_inputs, artifact)
    declared = {t.name for t in spec.inputs}
    for name in found_inputs.keys() - declared:
        problems.append(f"model '{spec.name}': {artifact} needs input '{name}' "
                        f"({found_inputs[name].describe()}), which config.pbtxt does not declare")
    if signature.outputs is not None:
        found_outputs = {t.name: t for t in signature.outputs}
        for tensor in spec.outputs:
            problems += _tensor_problems(spec, "output", tensor, found_outputs.get(tensor.name),
                                         found_outputs, artifact)
    return problems


def _tensor_problems(spec: ModelSpec, kind: str, declared: TensorSpec,
                     found: ArtifactTensor | None, available: Mapping[str, ArtifactTensor],
                     artifact: str) -> list[str]:
    where = f"model '{spec.name}': {kind} '{declared.name}'"
    if found is None:
        names = ", ".join(sorted(available)) or "none"
        return [f"{where} is declared in config.pbtxt but {artifact} has no such {kind} "
                f"(it has: {names})"]
    problems = []
    if found.dtype is not None and found.dtype != declared.numpy_dtype.name:
        problems.append(f"{where}: config.pbtxt declares {declared.data_type} "
                        f"({declared.numpy_dtype.name}), {artifact} has {found.dtype}")
    if found.shape is not None:
        expected = spec.full_shape(declared)
        batch_note = f" (batch + dims {list(declared.dims)})" if spec.batched else ""
        if not shapes_compatible(expected, found.shape):
            problems.append(f"{where}: config.pbtxt implies shape "
                            f"{_show(expected)}{batch_note}, {artifact} has {_show(found.shape)}"
                            + _batch_hint(spec, found.shape, expected))
        elif spec.batched and found.shape and found.shape[0] >= 0:
            problems.append(f"{where}: {artifact} fixes the batch dimension at "
                            f"{found.shape[0]}, but max_batch_size {spec.max_batch_size} needs a "
                            f"variable one; export with a dynamic first axis")
    return problems


def _batch_hint(spec: ModelSpec, found: tuple[int, ...], expected: tuple[int, ...]) -> str:
    if spec.batched and len(found) == len(expected) - 1:
        return "; the artifact has no batch dimension: set max_batch_size: 0"
    if not spec.batched and len(found) == len(expected) + 1:
        return ("; the artifact has a batch dimension that dims omit: set max_batch_size > 0 "
                "or add it to dims")
    return ""


def _show(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) if d >= 0 else "-1" for d in shape) + "]"
