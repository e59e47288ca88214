"""TensorFlow SavedModel on the CPU, through a signature as the native backend does."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from offload.errors import ModelRepositoryError
from offload_server.backends.runner import ArtifactTensor, Signature
from offload_server.model_spec import ModelSpec

DEFAULT_SIGNATURE = "serving_default"
log = logging.getLogger(__name__)


class SavedModelRunner:
    def __init__(self, artifact: Path, spec: ModelSpec) -> None:
        import tensorflow as tf

        intra = spec.int_parameter("TF_INTRA_OP_PARALLELISM")
        inter = spec.int_parameter("TF_INTER_OP_PARALLELISM")
        # Threads are per process (one process per instance), settable only before
        # TensorFlow's first use, which in a backend stub this is.
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
        try:
            self._loaded = tf.saved_model.load(str(artifact))
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


def _tensor(name: str, spec) -> ArtifactTensor:
    shape = None
    if spec.shape.rank is not None:
        shape = tuple(-1 if d is None else int(d) for d in spec.shape.as_list())
    return ArtifactTensor(name, np.dtype(spec.dtype.as_numpy_dtype).name, shape)


def load(artifact: Path, spec: ModelSpec) -> SavedModelRunner:
    return SavedModelRunner(artifact, spec)
