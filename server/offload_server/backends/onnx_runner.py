"""ONNX Runtime on the CPU, configured like Triton's native onnxruntime backend."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from offload.errors import ModelRepositoryError
from offload_server.backends.runner import ArtifactTensor, Signature
from offload_server.model_spec import ModelSpec

# onnxruntime's type strings, as numpy dtype names.
_ONNX_TO_NUMPY = {
    "tensor(bool)": "bool",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(float16)": "float16",
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16",
    "tensor(string)": "object",
}


class OnnxRunner:
    def __init__(self, artifact: Path, spec: ModelSpec) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # The native backend's parameter names (config.pbtxt `parameters`).
        intra = spec.int_parameter("intra_op_thread_count")
        inter = spec.int_parameter("inter_op_thread_count")
        if intra is not None:
            options.intra_op_num_threads = intra
        if inter is not None:
            options.inter_op_num_threads = inter
        try:
            self.session = ort.InferenceSession(str(artifact), options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception zoo
            raise ModelRepositoryError(
                f"model '{spec.name}': onnxruntime cannot load {artifact}: {error}"
            ) from error
        self.signature = Signature(
            inputs=tuple(_tensor(arg) for arg in self.session.get_inputs()),
            outputs=tuple(_tensor(arg) for arg in self.session.get_outputs()),
        )
        self._output_names = [t.name for t in spec.outputs]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self._output_names, dict(inputs))
        return dict(zip(self._output_names, values, strict=True))


def _tensor(arg) -> ArtifactTensor:
    shape = None
    if arg.shape is not None:
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return ArtifactTensor(arg.name, _ONNX_TO_NUMPY.get(arg.type, arg.type), shape)


def load(artifact: Path, spec: ModelSpec) -> OnnxRunner:
    return OnnxRunner(artifact, spec)
