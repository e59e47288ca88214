"""Tiny real models, exported inside the tests into temporary Triton repositories.

Each `export_*` writes `<repo>/<name>/config.pbtxt` and `<repo>/<name>/1/<artifact>` and
returns a function that runs the same model in-process, for comparison with the server.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

InProcess = Callable[..., dict[str, np.ndarray]]

N_FEATURES, N_HIDDEN, N_OUT = 8, 32, 3

# (config data_type, numpy dtype) of the dtype round-trip models' five inputs a..e.
DTYPES = {
    "a": ("TYPE_FP32", np.float32),
    "b": ("TYPE_FP16", np.float16),
    "c": ("TYPE_INT32", np.int32),
    "d": ("TYPE_INT64", np.int64),
    "e": ("TYPE_BOOL", np.bool_),
}


def write_config(repo: Path, name: str, body: str) -> Path:
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(f'name: "{name}"\n{body.strip()}\n')
    return model_dir


def tensor(name: str, data_type: str, dims: list[int]) -> str:
    return f'{{ name: "{name}" data_type: {data_type} dims: {dims} }}'


def mlp_config(backend: str, input_name: str, output_name: str, *, max_batch_size: int = 1024,
               extra: str = "", features: int = N_FEATURES) -> str:
    return f"""
backend: "{backend}"
max_batch_size: {max_batch_size}
input [ {tensor(input_name, "TYPE_FP32", [features])} ]
output [ {tensor(output_name, "TYPE_FP32", [N_OUT])} ]
{extra}
"""


def _torch_mlp(seed: int = 0):
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(N_FEATURES, N_HIDDEN), torch.nn.ReLU(),
        torch.nn.Linear(N_HIDDEN, N_HIDDEN), torch.nn.ReLU(),
        torch.nn.Linear(N_HIDDEN, N_OUT),
    ).eval()


def _torch_runner(module, names: list[str]) -> InProcess:
    import torch

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            result = module(torch.from_numpy(x))
        return {names[0]: result.numpy()}
    return run


def export_onnx_mlp(repo: Path, name: str = "mlp_onnx", *, extra: str = "",
                    config_features: int = N_FEATURES, config_body: str | None = None,
                    ) -> InProcess:
    import torch

    module = _torch_mlp()
    model_dir = write_config(repo, name, config_body or mlp_config(
        "onnxruntime", "x", "y", extra=extra, features=config_features))
    torch.onnx.export(module, (torch.zeros(2, N_FEATURES),), str(model_dir / "1" / "model.onnx"),
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    return _torch_runner(module, ["y"])


def export_torchscript_mlp(repo: Path, name: str = "mlp_torchscript", *, extra: str = "",
                           input_name: str = "INPUT__0") -> InProcess:
    import torch

    module = _torch_mlp()
    model_dir = write_config(repo, name, mlp_config("pytorch", input_name, "OUTPUT__0",
                                                     extra=extra))
    torch.jit.script(module).save(str(model_dir / "1" / "model.pt"))
    return _torch_runner(module, ["OUTPUT__0"])


def export_savedmodel_mlp(repo: Path, name: str = "mlp_savedmodel", *,
                          extra: str = "") -> InProcess:
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(N_FEATURES,), name="x")
    hidden = keras.layers.Dense(N_HIDDEN, activation="relu")(inputs)
    hidden = keras.layers.Dense(N_HIDDEN, activation="relu")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(N_OUT)(hidden))
    model_dir = write_config(repo, name, mlp_config("tensorflow", "x", "output_0", extra=extra))
    model.export(str(model_dir / "1" / "model.savedmodel"), verbose=False)

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        return {"output_0": np.asarray(model(x, training=False))}
    return run


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
