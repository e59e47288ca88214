"""The backends' runners in this process: thread parameters, as the native backends name them."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import tiny_models as tm

from offload_server.backends.onnx_runner import OnnxRunner
from offload_server.backends.torchscript_runner import TorchScriptRunner
from offload_server.model_spec import spec_from_folder


def test_onnxruntime_thread_parameters(tmp_path):
    tm.export_onnx_mlp(tmp_path, "m")
    spec = replace(spec_from_folder(tmp_path / "m"),
                   parameters={"intra_op_thread_count": "1", "inter_op_thread_count": "2"})
    runner = OnnxRunner(tmp_path / "m" / "1" / "model.onnx", spec)
    options = runner.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 2)


def test_pytorch_thread_parameter(tmp_path):
    import torch

    tm.export_torchscript_mlp(tmp_path, "m")
    spec = replace(spec_from_folder(tmp_path / "m"), parameters={"INTRA_OP_THREAD_COUNT": "1"})
    before = torch.get_num_threads()
    try:
        TorchScriptRunner(tmp_path / "m" / "1" / "model.pt", spec)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_tensorflow_thread_parameters_in_a_fresh_process(tmp_path):
    # TensorFlow takes thread settings only before its first use, as in a backend's stub.
    tm.export_savedmodel_mlp(tmp_path, "m")
    code = f"""
from dataclasses import replace
from pathlib import Path
from offload_server.backends.savedmodel_runner import load
from offload_server.model_spec import spec_from_folder
folder = Path({str(tmp_path / "m")!r})
spec = replace(spec_from_folder(folder), parameters={{"TF_INTRA_OP_PARALLELISM": "1",
                                                     "TF_INTER_OP_PARALLELISM": "2"}})
load(folder / "1" / "model.savedmodel", spec)
import tensorflow as tf
print(tf.config.threading.get_intra_op_parallelism_threads(),
      tf.config.threading.get_inter_op_parallelism_threads())
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.split()[-2:] == ["1", "2"]
