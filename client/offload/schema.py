"""What a model takes and gives: its tensors, their types and shapes, its batch size, from
the server's metadata (and Triton's config where there is one)."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from offload import dtypes
from offload.errors import NotSupportedError


@dataclass(frozen=True)
class TensorInfo:
    """An input or output: `shape` includes the batch dimension (-1) when the model batches;
    -1 marks any variable dimension."""

    name: str
    datatype: str  # protocol spelling: FP32, INT64, BYTES, ...
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return dtypes.TRITON_TO_NUMPY[self.datatype]

    @property
    def fixed_dims(self) -> tuple[tuple[int, int], ...]:
        """(axis, size) of the dimensions that must match exactly (not -1)."""
        return tuple((axis, size) for axis, size in enumerate(self.shape) if size >= 0)

    def describe(self) -> str:
        return f"'{self.name}' {self.datatype} {list(self.shape)}"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str  # "" = the server's choice (its version policy)
    platform: str
    max_batch_size: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    # The framing bytes of requests, by (version, input shapes): see build_request; and
    # the last responses' bytes before their tensors: see decode_response.
    framing: dict = field(default_factory=dict, compare=False, repr=False)
    responses: list = field(default_factory=list, compare=False, repr=False)
    # Derived in __post_init__ (see there).
    _checks: tuple = field(init=False, compare=False, repr=False)
    _input_names: frozenset[str] = field(init=False, compare=False, repr=False)
    _output_names: frozenset[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # The per-call checks read these instead of recomputing them (a call's Python work
        # runs with cold caches after each round trip, so every step counts; see RESULTS.md).
        checks = tuple((t.name, t.datatype, t.dtype, len(t.shape), *_fixed_dims_check(t))
                       for t in self.inputs)
        object.__setattr__(self, "_checks", checks)
        object.__setattr__(self, "_input_names", frozenset(t.name for t in self.inputs))
        object.__setattr__(self, "_output_names", frozenset(t.name for t in self.outputs))

    def __reduce__(self) -> tuple:
        # Pickled as its description; the caches of framings and responses start anew.
        return ModelInfo, (self.name, self.version, self.platform, self.max_batch_size,
                           self.inputs, self.outputs)

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def input(self, name: str) -> TensorInfo:
        return next(t for t in self.inputs if t.name == name)


def _fixed_dims_check(tensor: TensorInfo) -> tuple[Callable | None, object]:
    """(getter of the dimensions that must match, what it must return), for one C-level
    call per input instead of a Python loop: operator.itemgetter gives the value itself
    for one axis and a tuple for several."""
    fixed = tensor.fixed_dims
    if not fixed:
        return None, None
    axes, sizes = zip(*fixed, strict=True)
    return operator.itemgetter(*axes), sizes[0] if len(sizes) == 1 else sizes


def model_info(metadata, config=None, *, max_batch_size: int | None = None) -> ModelInfo:
    """From a ModelMetadataResponse and, where the server has one (Triton), a
    ModelConfigResponse. Without a config the batch size is unknown: `max_batch_size`
    (the caller's) or 0 (calls are not split; the shapes are taken as declared).
    `max_batch_size` also caps the config's."""
    def tensors(entries, kind: str) -> tuple[TensorInfo, ...]:
        found = []
        for t in entries:
            if t.datatype not in dtypes.TRITON_TO_NUMPY:
                raise NotSupportedError(
                    f"model '{metadata.name}', {kind} '{t.name}': data type {t.datatype!r} "
                    f"is not one offload handles ({', '.join(dtypes.TRITON_TO_NUMPY)})",
                    model=metadata.name)
            found.append(TensorInfo(t.name, t.datatype, tuple(int(d) for d in t.shape)))
        return tuple(found)

    declared = int(config.config.max_batch_size) if config is not None else 0
    if max_batch_size is not None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        declared = min(declared, max_batch_size) if declared else max_batch_size
    return ModelInfo(name=metadata.name, version="", platform=metadata.platform,
                     max_batch_size=declared, inputs=tensors(metadata.inputs, "input"),
                     outputs=tensors(metadata.outputs, "output"))
