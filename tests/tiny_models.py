"""Tiny real models for the tests, exported into temporary Triton repositories.

The reference MLPs live in `offload_server.reference_models` (the benchmark serves them
too); the models here exercise data types and variable shapes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from offload_server.reference_models import (  # noqa: F401  (re-exported for the tests)
    MLPS,
    N_FEATURES,
    N_HIDDEN,
    N_OUT,
    export_onnx_mlp,
    export_savedmodel_mlp,
    export_torchscript_mlp,
    mlp_config,
    tensor,
    write_config,
)

# (config data_type, numpy dtype) of the dtype round-trip models' five inputs a..e.
DTYPES = {
    "a": ("TYPE_FP32", np.float32),
    "b": ("TYPE_FP16", np.float16),
    "c": ("TYPE_INT32", np.int32),
    "d": ("TYPE_INT64", np.int64),
    "e": ("TYPE_BOOL", np.bool_),
}


# ------------------------------------------------------------ dtype round trips
def dtype_config(backend: str) -> str:
    inputs = ", ".join(tensor(n, t, [3]) for n, (t, _) in DTYPES.items())
    outputs = ", ".join(tensor(f"{n}_out", t, [3]) for n, (t, _) in DTYPES.items())
    return f"""
backend: "{backend}"
max_batch_size: 16
input [ {inputs} ]
output [ {outputs} ]
dynamic_batching {{ }}
"""


def dtype_reference(a, b, c, d, e) -> dict[str, np.ndarray]:
    """What every dtype model computes, in numpy."""
    return {"a_out": a * 2, "b_out": b, "c_out": c + 1, "d_out": d * 3, "e_out": ~e}


def _torch_dtype_module():
    import torch

    class DtypeModel(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor,
                    e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                              torch.Tensor, torch.Tensor]:
            return a * 2, b.clone(), c + 1, d * 3, torch.logical_not(e)

    return DtypeModel().eval()


def export_onnx_dtypes(repo: Path, name: str = "dtypes_onnx") -> None:
    import torch

    model_dir = write_config(repo, name, dtype_config("onnxruntime"))
    example = tuple(torch.from_numpy(np.zeros((2, 3), dtype)) for _, dtype in DTYPES.values())
    torch.onnx.export(_torch_dtype_module(), example, str(model_dir / "1" / "model.onnx"),
                      input_names=list(DTYPES), output_names=[f"{n}_out" for n in DTYPES],
                      dynamic_axes={n: {0: "batch"}
                                    for n in [*DTYPES, *(f"{n}_out" for n in DTYPES)]},
                      dynamo=False)


def export_torchscript_dtypes(repo: Path, name: str = "dtypes_torchscript") -> None:
    import torch

    model_dir = write_config(repo, name, dtype_config("pytorch"))
    torch.jit.script(_torch_dtype_module()).save(str(model_dir / "1" / "model.pt"))


def export_savedmodel_dtypes(repo: Path, name: str = "dtypes_savedmodel") -> None:
    import tensorflow as tf

    model_dir = write_config(repo, name, dtype_config("tensorflow"))
    specs = [tf.TensorSpec([None, 3], tf.as_dtype(dtype), name=n)
             for n, (_, dtype) in DTYPES.items()]

    class DtypeModule(tf.Module):
        @tf.function(input_signature=specs)
        def serve(self, a, b, c, d, e):
            return {"a_out": a * 2, "b_out": tf.identity(b), "c_out": c + 1, "d_out": d * 3,
                    "e_out": tf.logical_not(e)}

    module = DtypeModule()
    tf.saved_model.save(module, str(model_dir / "1" / "model.savedmodel"),
                        signatures={"serving_default": module.serve})


# ------------------------------------------------------------ variable shapes
def export_onnx_constituent_sum(repo: Path, name: str = "constituent_sum") -> None:
    """A model over a variable number of constituents: sums them, [B, N, 4] -> [B, 4]."""
    import torch

    class Sum(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum(dim=1)

    model_dir = write_config(repo, name, f"""
backend: "onnxruntime"
max_batch_size: 64
input [ {tensor("constituents", "TYPE_FP32", [-1, 4])} ]
output [ {tensor("jet", "TYPE_FP32", [4])} ]
dynamic_batching {{ max_queue_delay_microseconds: 20000 }}
""")
    torch.onnx.export(Sum(), (torch.zeros(2, 5, 4),), str(model_dir / "1" / "model.onnx"),
                      input_names=["constituents"], output_names=["jet"],
                      dynamic_axes={"constituents": {0: "batch", 1: "n"}, "jet": {0: "batch"}},
                      dynamo=False)


# ------------------------------------------------------------ models that fail at run time
def export_torchscript_wrong_output_dtype(repo: Path, name: str = "wrong_output_dtype") -> None:
    """Declares FP32 but returns float64: TorchScript keeps no dtypes, so only running it
    can tell."""
    import torch

    class Doubles(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.double()

    model_dir = write_config(repo, name, mlp_config("pytorch", "INPUT__0", "OUTPUT__0")
                             .replace(f"dims: [{N_OUT}]", f"dims: [{N_FEATURES}]"))
    torch.jit.script(Doubles()).save(str(model_dir / "1" / "model.pt"))


def export_torchscript_refuses_negative(repo: Path, name: str = "refuses_negative",
                                        extra: str = "") -> None:
    """Raises inside forward() for negative input, like a model meeting data it cannot take."""
    import torch

    class Refuses(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if bool((x < 0).any()):
                raise ValueError("negative energy in input")
            return x

    model_dir = write_config(repo, name, mlp_config("pytorch", "INPUT__0", "OUTPUT__0",
                                                     extra=extra)
                             .replace(f"dims: [{N_OUT}]", f"dims: [{N_FEATURES}]"))
    torch.jit.script(Refuses()).save(str(model_dir / "1" / "model.pt"))


# ------------------------------------------------------------ Python-backend models
_ECHO = '''
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Echoes INPUT0 as OUTPUT0, after sleeping `sleep_s` seconds per execution."""

    def initialize(self, args):
        import json
        config = json.loads(args["model_config"])
        self.sleep = float(config.get("parameters", {}).get("sleep_s", {}).get("string_value", 0))

    def execute(self, requests):
        if self.sleep:
            time.sleep(self.sleep)
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())])
            for r in requests]
'''


def export_echo(repo: Path, name: str, data_type: str, *, max_batch_size: int = 0,
                dims: tuple[int, ...] = (-1,), sleep_s: float = 0.0, extra: str = "") -> None:
    """An identity model on Triton's Python backend (`backend: "python"`, 1/model.py)."""
    dims_text = list(dims)
    model_dir = write_config(repo, name, f"""
backend: "python"
max_batch_size: {max_batch_size}
input [ {tensor("INPUT0", data_type, dims_text)} ]
output [ {tensor("OUTPUT0", data_type, dims_text)} ]
parameters {{ key: "sleep_s" value: {{ string_value: "{sleep_s}" }} }}
{extra}
""")
    (model_dir / "1" / "model.py").write_text(_ECHO)


#: backend -> (model name, exporter) of the models with one input and output of each dtype.
DTYPE_MODELS = {
    "onnxruntime": ("dtypes_onnx", export_onnx_dtypes),
    "pytorch": ("dtypes_torchscript", export_torchscript_dtypes),
    "tensorflow": ("dtypes_savedmodel", export_savedmodel_dtypes),
}
