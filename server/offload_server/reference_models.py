"""Small reference MLPs exported to each CPU backend's format, with in-process twins.

The tests and `perf/bench_backends.py` serve these to compare the server with the same
model run in-process. Each `export_*` writes `<repo>/<name>/config.pbtxt` and
`<repo>/<name>/1/<artifact>` and returns a function that runs the same weights in-process.
Framework imports happen inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

InProcess = Callable[..., dict[str, np.ndarray]]

N_FEATURES, N_HIDDEN, N_OUT = 8, 32, 3


def write_config(repo: Path, name: str, body: str) -> Path:
    """`<repo>/<name>/config.pbtxt` from a config's fields in text format (`body`, without
    the name), parsed into Triton's ModelConfig and written by `model_config` (a typo in
    `body` fails here, with its line and column); the version folder `1/` made empty."""
    from offload_server import model_config

    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    config = model_config.parse(body)
    config.name = name
    model_config.write(model_dir / "config.pbtxt", config)
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


#: backend -> (model name, exporter, input name, output name)
MLPS: dict[str, tuple[str, Callable[..., InProcess], str, str]] = {
    "onnxruntime": ("mlp_onnx", export_onnx_mlp, "x", "y"),
    "pytorch": ("mlp_torchscript", export_torchscript_mlp, "INPUT__0", "OUTPUT__0"),
    "tensorflow": ("mlp_savedmodel", export_savedmodel_mlp, "x", "output_0"),
}
