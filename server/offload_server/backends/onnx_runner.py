"""ONNX Runtime on the CPU, configured like Triton's native onnxruntime backend."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from offload_server.backends.runner import ArtifactTensor, Signature
from offload_server.errors import ModelRepositoryError
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

        options = session_options(spec)
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


def session_options(spec: ModelSpec):
    """ONNX Runtime session options from the native backend's parameters (same names, same
    meaning: 0 or unset leaves ORT's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    intra = spec.thread_parameter("intra_op_thread_count")
    inter = spec.thread_parameter("inter_op_thread_count")
    if intra:
        options.intra_op_num_threads = intra
    if inter:
        options.inter_op_num_threads = inter
    mode = spec.int_parameter("execution_mode")
    if mode not in (None, 0, 1):
        raise ModelRepositoryError(
            f"model '{spec.name}': parameter execution_mode must be 0 (sequential) or 1 "
            f"(parallel), got {mode}")
    if mode is not None:
        options.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if mode == 1
                                  else ort.ExecutionMode.ORT_SEQUENTIAL)
    if "enable_mem_arena" in spec.parameters:
        options.enable_cpu_mem_arena = spec.bool_parameter("enable_mem_arena")
    if "enable_mem_pattern" in spec.parameters:
        options.enable_mem_pattern = spec.bool_parameter("enable_mem_pattern")
    return options


def _tensor(arg) -> ArtifactTensor:
    shape = None
    if arg.shape is not None:
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return ArtifactTensor(arg.name, _ONNX_TO_NUMPY.get(arg.type, arg.type), shape)


def load(artifact: Path, spec: ModelSpec, device: str = "cpu") -> OnnxRunner:
    if device != "cpu":  # placement.choose never asks; a clear error if a caller does
        raise ModelRepositoryError(f"model '{spec.name}': the CPU {spec.backend} backend "
                                   f"computes on the CPU only, not on {device}")
    return OnnxRunner(artifact, spec)
