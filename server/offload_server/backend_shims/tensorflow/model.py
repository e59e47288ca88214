"""Triton's entry point for `backend: "tensorflow"` on the CPU (TensorFlow SavedModel).

Triton loads `<backend-directory>/tensorflow/model.py` when it finds no libtriton_tensorflow.so;
the code lives in offload_server.backends.
"""

from offload_server.backends.savedmodel_runner import load
from offload_server.backends.triton_model import BatchingTritonModel


class TritonPythonModel(BatchingTritonModel):
    loader = staticmethod(load)
