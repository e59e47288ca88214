"""TensorFlow SavedModel on the CPU, through a signature as the native backend does."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from offload_server.backends.runner import ArtifactTensor, Signature
from offload_server.errors import ModelRepositoryError
from offload_server.model_spec import ModelSpec

DEFAULT_SIGNATURE = "serving_default"
log = logging.getLogger(__name__)


class SavedModelRunner:
    def __init__(self, artifact: Path, spec: ModelSpec) -> None:
        import tensorflow as tf

        intra, inter = thread_counts(spec)
        spec.bool_parameter("TF_USE_PER_SESSION_THREADS")  # checked; see parameters.py
        # Threads are per process (one process per instance), settable only before
        # TensorFlow's first use, which in a backend stub this is. 0 leaves TF's default.
        try:
            if intra is not None:
                tf.config.threading.set_intra_op_parallelism_threads(intra)
            if inter is not None:
                tf.config.threading.set_inter_op_parallelism_threads(inter)
        except RuntimeError as error:
            log.warning("model '%s': TensorFlow was already initialised in this process; "
                        "thread parameters not applied: %s", spec.name, error)
        self._tf = tf
        signature_name = spec.parameters.get("TF_SIGNATURE_DEF") or DEFAULT_SIGNATURE
        tag = spec.parameters.get("TF_GRAPH_TAG")
        try:
            self._loaded = tf.saved_model.load(str(artifact), tags=[tag] if tag else None)
        except Exception as error:
            raise ModelRepositoryError(
                f"model '{spec.name}': tensorflow cannot load the SavedModel at {artifact} "
                f"(a folder written by model.export() or tf.saved_model.save()): {error}"
            ) from error
        signatures = dict(self._loaded.signatures)
        if signature_name not in signatures:
            raise ModelRepositoryError(
                f"model '{spec.name}': SavedModel {artifact.name} has no signature "
                f"'{signature_name}' (it has: {', '.join(signatures) or 'none'}); "
                "set parameters { key: \"TF_SIGNATURE_DEF\" ... } to choose one"
            )
        self._function = signatures[signature_name]
        _, keyword_specs = self._function.structured_input_signature
        self.signature = Signature(
            inputs=tuple(_tensor(name, s) for name, s in keyword_specs.items()),
            outputs=tuple(_tensor(name, s)
                          for name, s in self._function.structured_outputs.items()),
        )
        self._output_names = [t.name for t in spec.outputs]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        tf = self._tf
        result = self._function(**{name: tf.constant(value) for name, value in inputs.items()})
        return {name: result[name].numpy() for name in self._output_names}


def thread_counts(spec: ModelSpec) -> tuple[int | None, int | None]:
    """(intra, inter) from the native names TF_NUM_INTRA_THREADS / TF_NUM_INTER_THREADS, or
    from offload's old names (deprecated: the native backend ignores them)."""
    counts = []
    for native, old in (("TF_NUM_INTRA_THREADS", "TF_INTRA_OP_PARALLELISM"),
                        ("TF_NUM_INTER_THREADS", "TF_INTER_OP_PARALLELISM")):
        value = spec.thread_parameter(native)
        if value is None and old in spec.parameters:
            log.warning("model '%s': parameter %s is deprecated and ignored by Triton's "
                        "native TensorFlow backend; use %s", spec.name, old, native)
            value = spec.thread_parameter(old)
        counts.append(value)
    return counts[0], counts[1]


def _tensor(name: str, spec) -> ArtifactTensor:
    shape = None
    if spec.shape.rank is not None:
        shape = tuple(-1 if d is None else int(d) for d in spec.shape.as_list())
    return ArtifactTensor(name, np.dtype(spec.dtype.as_numpy_dtype).name, shape)


def load(artifact: Path, spec: ModelSpec, device: str = "cpu") -> SavedModelRunner:
    if device != "cpu":  # placement.choose never asks; a clear error if a caller does
        raise ModelRepositoryError(f"model '{spec.name}': the CPU {spec.backend} backend "
                                   f"computes on the CPU only, not on {device}")
    return SavedModelRunner(artifact, spec)
