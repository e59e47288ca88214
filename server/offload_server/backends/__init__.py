"""The project's CPU backends: ONNX Runtime, TorchScript and TensorFlow SavedModel.

Each framework module has a `load(artifact, spec) -> Runner`; `triton_model` turns a
loader into the `TritonPythonModel` that Triton's Python-based backend mechanism runs,
and `offload repo check` uses the same loaders to compare artifacts with configs.
Framework imports happen inside `load`, never at import time.
"""
