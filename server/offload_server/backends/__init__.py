"""The project's CPU backends: ONNX Runtime, TorchScript and TensorFlow SavedModel.

Each framework module has a `load(artifact, spec) -> Runner`; `triton_model` turns a
loader into the `TritonPythonModel` that Triton's Python-based backend mechanism runs,
and `offload repo check` uses the same loaders to compare artifacts with configs.
Framework imports happen inside `load`, never at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from offload_server.backends.runner import Runner

#: backend name -> module whose `load(artifact, spec)` returns a Runner.
LOADERS = {
    "onnxruntime": "offload_server.backends.onnx_runner",
    "pytorch": "offload_server.backends.torchscript_runner",
    "tensorflow": "offload_server.backends.savedmodel_runner",
}


#: One intra-op and one inter-op thread, in the parameter names each CPU runner reads (those
#: of Triton's native backends): how a grid job, one core per slot, runs a model itself.
ONE_THREAD = {"intra_op_thread_count": "1", "inter_op_thread_count": "1",
              "TF_NUM_INTRA_THREADS": "1", "TF_NUM_INTER_THREADS": "1",
              "INTRA_OP_THREAD_COUNT": "1", "INTER_OP_THREAD_COUNT": "1"}


def load_in_process(model_dir: Path, version: str | int | None = None, *,
                    one_thread: bool = False) -> Runner:
    """A repository model, loaded in this process by the same code the server runs, and
    checked against its config: for in-process baselines and local fallbacks. `version`
    None: the one a request naming no version gets from Triton (the highest served).
    `one_thread`: with ONE_THREAD over the config's parameters."""
    from dataclasses import replace

    from offload_server.backends.triton_model import load_checked
    from offload_server.model_spec import default_version, spec_from_folder

    model_dir = Path(model_dir)
    version = default_version(model_dir) if version is None else str(version)
    spec = spec_from_folder(model_dir)
    if one_thread:
        spec = replace(spec, parameters={**spec.parameters, **ONE_THREAD})
    return load_checked(model_dir, version, spec)
