"""Triton's entry point for `backend: "onnxruntime"` on the CPU (ONNX Runtime).

Triton loads `<backend-directory>/onnxruntime/model.py` when it finds no libtriton_onnxruntime.so;
the code lives in offload_server.backends.
"""

from offload_server.backends.onnx_runner import load
from offload_server.backends.triton_model import BatchingTritonModel


class TritonPythonModel(BatchingTritonModel):
    loader = staticmethod(load)
