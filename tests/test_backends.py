"""The CPU backends, through a real tritonserver and a plain tritonclient.grpc client."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tiny_models as tm
import tritonclient.grpc as grpcclient
from helpers import settled_count
from tritonclient.utils import InferenceServerException, np_to_triton_dtype


def infer(triton, model: str, inputs: dict[str, np.ndarray], outputs: list[str]):
    request = []
    for name, value in inputs.items():
        tensor = grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value)
        request.append(tensor)
    result = triton.infer(model, request,
                          outputs=[grpcclient.InferRequestedOutput(n) for n in outputs])
    return {name: result.as_numpy(name) for name in outputs}


def test_every_model_is_ready(server, triton, repository):
    assert triton.is_server_ready()
    names = sorted(p.name for p in repository.iterdir() if p.is_dir())
    for name in names:
        assert triton.is_model_ready(name), name
    assert {m.name for m in server.models() if m.state == "READY"} == set(names)


@pytest.mark.parametrize("backend", list(tm.MLPS))
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_served_matches_in_process(triton, in_process, backend, batch):
    name, _, input_name, output_name = tm.MLPS[backend]
    x = np.random.default_rng(batch).normal(size=(batch, tm.N_FEATURES)).astype(np.float32)
    served = infer(triton, name, {input_name: x}, [output_name])[output_name]
    expected = in_process[backend](x)[output_name]
    assert served.shape == (batch, tm.N_OUT)
    assert served.dtype == np.float32
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", list(tm.DTYPE_MODELS))
def test_data_types_round_trip(triton, backend):
    rng = np.random.default_rng(1)
    inputs = {
        "a": rng.normal(size=(5, 3)).astype(np.float32),
        "b": rng.normal(size=(5, 3)).astype(np.float16),
        "c": rng.integers(-1000, 1000, size=(5, 3), dtype=np.int32),
        "d": rng.integers(-2**40, 2**40, size=(5, 3), dtype=np.int64),
        "e": rng.integers(0, 2, size=(5, 3)).astype(np.bool_),
    }
    name, _ = tm.DTYPE_MODELS[backend]
    served = infer(triton, name, inputs, [f"{n}_out" for n in tm.DTYPES])
    for key, expected in tm.dtype_reference(**inputs).items():
        assert served[key].dtype == expected.dtype, key
        np.testing.assert_array_equal(served[key], expected, err_msg=f"{backend} {key}")


def _concurrent(triton, model: str, input_name: str, batches: list[np.ndarray], output: str):
    results: list = [None] * len(batches)
    done = threading.Semaphore(0)

    def callback(index):
        def on_result(result, error):
            results[index] = error if error is not None else result.as_numpy(output)
            done.release()
        return on_result

    for index, x in enumerate(batches):
        tensor = grpcclient.InferInput(input_name, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        triton.async_infer(model, [tensor], callback(index))
    for _ in batches:
        assert done.acquire(timeout=60), "a request got no answer within 60 s"
    return results


def _execution_counts(triton, model: str) -> tuple[int, int]:
    stats = triton.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


@pytest.mark.parametrize("backend", list(tm.MLPS))
def test_dynamic_batcher_merges_concurrent_requests(triton, in_process, backend):
    name, _, input_name, output_name = tm.MLPS[backend]
    inferences_before, executions_before = _execution_counts(triton, name)
    rng = np.random.default_rng(7)
    batches = [rng.normal(size=(1, tm.N_FEATURES)).astype(np.float32) for _ in range(48)]
    results = _concurrent(triton, name, input_name, batches, output_name)
    # Each caller gets its own row back, in its own slot: nothing mixed up between requests.
    for x, served in zip(batches, results, strict=True):
        assert not isinstance(served, Exception), served
        np.testing.assert_allclose(served, in_process[backend](x)[output_name],
                                   rtol=1e-5, atol=1e-5)
    inferences = settled_count(lambda: _execution_counts(triton, name)[0],
                               inferences_before + 48)
    assert inferences - inferences_before == 48
    executions = _execution_counts(triton, name)[1]
    assert 0 < executions - executions_before < 48


def test_variable_shapes_are_batched_per_shape(triton):
    rng = np.random.default_rng(3)
    batches = [rng.normal(size=(1 + i % 3, 2 + i % 4, 4)).astype(np.float32) for i in range(24)]
    results = _concurrent(triton, "constituent_sum", "constituents", batches, "jet")
    for x, served in zip(batches, results, strict=True):
        assert not isinstance(served, Exception), served
        np.testing.assert_allclose(served, x.sum(axis=1), rtol=1e-5, atol=1e-6)


def test_instance_group_count_and_threads(server, triton, in_process):
    config = triton.get_model_config("mlp_onnx_two_instances", as_json=True)["config"]
    assert config["instance_group"][0]["count"] == 2
    x = np.ones((3, tm.N_FEATURES), np.float32)
    served = infer(triton, "mlp_onnx_two_instances", {"x": x}, ["y"])["y"]
    np.testing.assert_allclose(served, in_process["onnxruntime"](x)["y"], rtol=1e-5, atol=1e-5)
    stubs = _stub_processes(server.pid, "mlp_onnx_two_instances")
    assert len(stubs) == 2, stubs


def _stub_processes(pgid: int, model: str) -> list[str]:
    from pathlib import Path

    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[2]) == pgid and "triton_python_backend_stub" in cmdline and model in cmdline:
            found.append(cmdline)
    return found


def test_batch_over_max_batch_size_is_refused(triton):
    x = np.zeros((1025, tm.N_FEATURES), np.float32)
    with pytest.raises(InferenceServerException, match=r"batch-size must be <= 1024"):
        infer(triton, "mlp_onnx", {"x": x}, ["y"])
    assert triton.is_model_ready("mlp_onnx")


def test_output_dtype_disagreeing_with_config_is_a_clear_error(triton):
    x = np.ones((2, tm.N_FEATURES), np.float32)
    with pytest.raises(InferenceServerException) as raised:
        infer(triton, "wrong_output_dtype", {"INPUT__0": x}, ["OUTPUT__0"])
    assert ("model 'wrong_output_dtype': output 'OUTPUT__0': config.pbtxt declares TYPE_FP32 "
            "(float32), the model returned float64") in str(raised.value)
    assert triton.is_model_ready("wrong_output_dtype")


def test_model_error_reaches_its_caller_and_the_server_stays_up(triton):
    good = np.ones((2, tm.N_FEATURES), np.float32)
    with pytest.raises(InferenceServerException) as raised:
        infer(triton, "refuses_negative", {"INPUT__0": -good}, ["OUTPUT__0"])
    message = str(raised.value)
    assert "model 'refuses_negative' (pytorch) failed on a batch of 2" in message
    assert "negative energy in input" in message
    # The same model keeps serving good requests.
    served = infer(triton, "refuses_negative", {"INPUT__0": good}, ["OUTPUT__0"])["OUTPUT__0"]
    np.testing.assert_array_equal(served, good)


def test_a_bad_request_merged_with_good_ones_fails_alone(triton):
    rng = np.random.default_rng(11)
    batches = [np.abs(rng.normal(size=(1, tm.N_FEATURES))).astype(np.float32) for _ in range(16)]
    batches[5] = -batches[5]
    _, executions_before = _execution_counts(triton, "refuses_negative")
    results = _concurrent(triton, "refuses_negative", "INPUT__0", batches, "OUTPUT__0")
    assert isinstance(results[5], InferenceServerException)
    assert "negative energy in input" in str(results[5])
    for index, (x, served) in enumerate(zip(batches, results, strict=True)):
        if index != 5:
            assert not isinstance(served, Exception), (index, served)
            np.testing.assert_array_equal(served, x)
    _, executions = _execution_counts(triton, "refuses_negative")
    assert executions - executions_before < 16  # they were merged, and still kept apart
