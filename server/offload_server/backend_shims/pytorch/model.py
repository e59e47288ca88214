"""Triton's entry point for `backend: "pytorch"` on the CPU (TorchScript).

Triton loads `<backend-directory>/pytorch/model.py` when it finds no libtriton_pytorch.so;
the code lives in offload_server.backends.
"""

from offload_server.backends.torchscript_runner import load
from offload_server.backends.triton_model import BatchingTritonModel


class TritonPythonModel(BatchingTritonModel):
    loader = staticmethod(load)
