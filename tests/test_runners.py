"""The backends' runners in this process: parameters as the native backends name them, and
where an instance computes."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace

import pytest
import tiny_models as tm

from offload_server.backends.onnx_runner import OnnxRunner
from offload_server.backends.torchscript_runner import TorchScriptRunner
from offload_server.errors import ModelRepositoryError
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


def _tensorflow_threads(folder, parameters: dict[str, str]) -> subprocess.CompletedProcess:
    # TensorFlow takes thread settings only before its first use, as in a backend's stub.
    code = f"""
from dataclasses import replace
from pathlib import Path
from offload_server.backends.savedmodel_runner import load
from offload_server.model_spec import spec_from_folder
folder = Path({str(folder)!r})
spec = replace(spec_from_folder(folder), parameters={parameters!r})
load(folder / "1" / "model.savedmodel", spec)
import tensorflow as tf
print(tf.config.threading.get_intra_op_parallelism_threads(),
      tf.config.threading.get_inter_op_parallelism_threads())
"""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)


def test_tensorflow_native_thread_parameters_in_a_fresh_process(tmp_path):
    tm.export_savedmodel_mlp(tmp_path, "m")
    result = _tensorflow_threads(tmp_path / "m", {"TF_NUM_INTRA_THREADS": "1",
                                                  "TF_NUM_INTER_THREADS": "2",
                                                  "TF_USE_PER_SESSION_THREADS": "On"})
    assert result.stdout.split()[-2:] == ["1", "2"]
    assert "deprecated" not in result.stderr


def test_tensorflow_old_thread_names_still_work_with_a_warning(tmp_path):
    tm.export_savedmodel_mlp(tmp_path, "m")
    result = _tensorflow_threads(tmp_path / "m", {"TF_INTRA_OP_PARALLELISM": "1",
                                                  "TF_INTER_OP_PARALLELISM": "2"})
    assert result.stdout.split()[-2:] == ["1", "2"]
    assert "TF_INTRA_OP_PARALLELISM is deprecated" in result.stderr
    assert "use TF_NUM_INTRA_THREADS" in result.stderr


def test_tensorflow_native_name_wins_over_the_old_one(tmp_path):
    tm.export_savedmodel_mlp(tmp_path, "m")
    result = _tensorflow_threads(tmp_path / "m", {"TF_NUM_INTRA_THREADS": "1",
                                                  "TF_INTRA_OP_PARALLELISM": "2"})
    assert result.stdout.split()[-2] == "1"


def test_onnxruntime_session_parameters(tmp_path):
    import onnxruntime as ort

    tm.export_onnx_mlp(tmp_path, "m")
    spec = replace(spec_from_folder(tmp_path / "m"),
                   parameters={"execution_mode": "1", "enable_mem_arena": "0",
                               "enable_mem_pattern": "false"})
    options = OnnxRunner(tmp_path / "m" / "1" / "model.onnx", spec).session.get_session_options()
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert options.enable_cpu_mem_arena is False
    assert options.enable_mem_pattern is False


@pytest.mark.parametrize(("key", "value", "message"), [
    ("execution_mode", "2", "execution_mode must be 0 (sequential) or 1 (parallel), got 2"),
    ("enable_mem_arena", "yes", "enable_mem_arena must be true/on/1 or false/off/0"),
    ("intra_op_thread_count", "-1", "intra_op_thread_count must be >= 0"),
    ("inter_op_thread_count", "two", "inter_op_thread_count must be an integer, got 'two'"),
])
def test_onnxruntime_bad_parameter_values_are_refused(tmp_path, key, value, message):
    tm.export_onnx_mlp(tmp_path, "m")
    spec = replace(spec_from_folder(tmp_path / "m"), parameters={key: value})
    with pytest.raises(ModelRepositoryError, match=re.escape(message)):
        OnnxRunner(tmp_path / "m" / "1" / "model.onnx", spec)


def test_pytorch_native_boolean_parameters(tmp_path):
    import numpy as np

    tm.export_torchscript_mlp(tmp_path, "m")
    x = np.ones((3, tm.N_FEATURES), np.float32)
    plain = TorchScriptRunner(tmp_path / "m" / "1" / "model.pt", spec_from_folder(tmp_path / "m"))
    spec = replace(spec_from_folder(tmp_path / "m"),
                   parameters={"INFERENCE_MODE": "false", "DISABLE_OPTIMIZED_EXECUTION": "TRUE",
                               "ENABLE_WEIGHT_SHARING": "on", "ENABLE_CACHE_CLEANING": "1"})
    runner = TorchScriptRunner(tmp_path / "m" / "1" / "model.pt", spec)
    assert (runner._inference_mode, runner._optimized, runner._clean_cache) == (False, False,
                                                                                False)
    (name,) = [t.name for t in spec.outputs]
    np.testing.assert_array_equal(runner.run({"INPUT__0": x})[name],
                                  plain.run({"INPUT__0": x})[name])


def test_pytorch_boolean_parsed_as_the_native_backend_does(tmp_path):
    tm.export_torchscript_mlp(tmp_path, "m")
    spec = replace(spec_from_folder(tmp_path / "m"), parameters={"INFERENCE_MODE": "yes"})
    # "yes" is in the native backend's README example, yet its ParseBoolValue refuses it.
    with pytest.raises(ModelRepositoryError, match="INFERENCE_MODE must be true/on/1"):
        TorchScriptRunner(tmp_path / "m" / "1" / "model.pt", spec)


def test_cpu_only_loaders_refuse_a_gpu_device(tmp_path):
    from offload_server.backends import onnx_runner

    tm.export_onnx_mlp(tmp_path, "m")
    with pytest.raises(ModelRepositoryError, match="computes on the CPU only, not on cuda:0"):
        onnx_runner.load(tmp_path / "m" / "1" / "model.onnx", spec_from_folder(tmp_path / "m"),
                         "cuda:0")


# ------------------------------------------------------------------- placement
@pytest.mark.parametrize(("backend", "kind", "device", "cuda", "expected", "warned"), [
    ("pytorch", "CPU", 0, 4, "cpu", None),
    ("pytorch", "MODEL", 0, 4, "cpu", None),
    ("pytorch", "GPU", 1, 2, "cuda:1", None),
    ("pytorch", "KIND_GPU", 0, 1, "cuda:0", None),
    ("pytorch", "GPU", 0, 0, "cpu", "this torch sees no CUDA device"),
    ("pytorch", "GPU", 3, 2, "cpu", "torch sees 2 CUDA device(s), not device 3"),
    ("onnxruntime", "GPU", 0, 1, "cpu", "the CPU onnxruntime backend has no GPU support"),
    ("tensorflow", "GPU", 0, 1, "cpu", "the CPU tensorflow backend has no GPU support"),
])
def test_placement(backend, kind, device, cuda, expected, warned):
    from offload_server.backends.placement import choose

    chosen = choose("m", backend, kind, device, cuda)
    assert chosen.device == expected
    if warned is None:
        assert chosen.warning is None
    else:
        assert warned in chosen.warning
        assert "model 'm'" in chosen.warning


def test_cuda_devices_of_cpu_only_backends_is_zero():
    from offload_server.backends.placement import cuda_devices

    assert cuda_devices("onnxruntime") == 0
    assert cuda_devices("tensorflow") == 0
    import torch

    assert cuda_devices("pytorch") == (torch.cuda.device_count()
                                       if torch.cuda.is_available() else 0)


def test_readme_lists_the_parameters_each_backend_reads():
    from pathlib import Path

    from offload_server.backends.parameters import markdown_table

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert markdown_table() in readme, "README's parameter table differs from parameters.py"
