"""The client's edges against the real server: one deadline for a whole call, bounded
windows, an event loop never blocked, shared memory from asyncio, long error messages,
malformed answers, bfloat16 NaNs, addresses without a port, and the command line's errors."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tiny_models as tm
from hypothesis import given, settings
from hypothesis import strategies as st

import offload
from offload import codec, dtypes, protocol, schema, shm
from offload.endpoints import parse_servers
from offload_server import LocalServer

pb = protocol.service_pb2
ROOT = Path(__file__).resolve().parent.parent

_LONG_ERROR = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        message = "the model failed: " + "detail " * 30000 + "(end)"
        return [pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
                for _ in requests]
'''


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("edges-repo")
    tm.export_onnx_mlp(repo, "mlp")
    # One row a request, 0.4 s each: a call of three rows, one at a time, takes 1.2 s.
    tm.export_echo(repo, "slow_rows", "TYPE_FP32", max_batch_size=1, dims=(4,), sleep_s=0.4)
    tm.export_echo(repo, "queue_of_two", "TYPE_FP32", max_batch_size=4, dims=(4,),
                   sleep_s=0.2,
                   extra="dynamic_batching { default_queue_policy { max_queue_size: 2 } }")
    long_error = tm.write_config(repo, "long_error", f"""
backend: "python"
max_batch_size: 0
input [ {tm.tensor("INPUT0", "TYPE_FP32", [-1])} ]
output [ {tm.tensor("OUTPUT0", "TYPE_FP32", [-1])} ]
""")
    (long_error / "1" / "model.py").write_text(_LONG_ERROR)
    return repo


@pytest.fixture(scope="module")
def server(repo):
    with LocalServer(repo) as running:
        yield running


# ------------------------------------------------------------------ deadlines, windows
def test_the_pieces_of_a_split_call_share_one_deadline(server):
    x = np.ones((3, 4), np.float32)

    async def split_call() -> None:
        async with offload.AsyncClient(server.grpc_url, pipeline=1) as client:
            model = await client.model("slow_rows")
            started = time.monotonic()
            with pytest.raises(offload.DeadlineExceededError):
                await model.infer(INPUT0=x, timeout=1.0)  # 3 pieces of 0.4 s, in turn
            assert time.monotonic() - started < 2.0
            assert (await model.infer(INPUT0=x, timeout=5))["OUTPUT0"].shape == (3, 4)

    asyncio.run(split_call())
    with offload.Client(server.grpc_url, pipeline=1) as client, \
            pytest.raises(offload.DeadlineExceededError):
        client.model("slow_rows").infer(INPUT0=x, timeout=1.0)


def test_async_ragged_entries_keep_a_bounded_window(server):
    entries = [{"INPUT0": np.full((1, 4), i, np.float32)} for i in range(10)]

    async def ragged(pipeline: int) -> list:
        async with offload.AsyncClient(server.grpc_url, pipeline=pipeline, retries=0) as client:
            model = await client.model("queue_of_two")
            return await model.infer_ragged(entries)

    results = asyncio.run(ragged(2))  # the queue holds 2: a window of 2 never overflows it
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["OUTPUT0"], entries[i]["INPUT0"])
    with pytest.raises(offload.ServerOverloadedError):
        asyncio.run(ragged(10))  # all at once: the queue refuses some


def test_async_health_does_not_block_the_loop():
    with socket.socket() as silent:  # accepts connections, never speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"

        async def probe_while_ticking() -> tuple[dict, int]:
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            ticker = asyncio.create_task(tick())
            async with offload.AsyncClient(address) as client:
                health = await client.health(timeout=1.0)
            ticker.cancel()
            return health, ticks

        health, ticks = asyncio.run(probe_while_ticking())
    assert health == {address: False}
    assert ticks >= 30  # the loop ran all along the 1 s probe


def test_async_client_with_shared_memory(server):
    async def run() -> tuple[np.ndarray, int]:
        async with offload.AsyncClient(server.grpc_url, shared_memory=True,
                                       token=server.token) as client:
            model = await client.model("mlp")
            y = (await model.infer(x=np.ones((300, tm.N_FEATURES), np.float32)))["y"]
            return y, model.stats().bytes_sent

    y, sent = asyncio.run(run())
    assert y.shape == (300, tm.N_OUT)
    assert sent < 2048  # the tensors went through shared memory, not the messages


# ------------------------------------------------------------------ answers
def test_a_long_error_message_arrives_whole_and_as_the_models_error(server):
    with offload.Client(server.grpc_url, retries=3) as client:
        model = client.model("long_error")
        with pytest.raises(offload.ServerInferenceError) as failed:
            model.infer(INPUT0=np.ones(3, np.float32))
        assert "the model failed: detail" in str(failed.value)
        assert "(end)" in str(failed.value)
        assert "queue" not in str(failed.value)
        assert model.stats().retries == 0


def _valid_response() -> bytes:
    message = pb.ModelInferResponse(model_name="m")
    message.outputs.add(name="y", datatype="FP32", shape=[2, 3])
    message.raw_output_contents.append(np.arange(6, dtype="<f4").tobytes())
    message.outputs.add(name="label", datatype="BYTES", shape=[2])
    message.raw_output_contents.append(b"\x01\x00\x00\x00a\x02\x00\x00\x00bc")
    return message.SerializeToString()


_INFO = schema.ModelInfo("m", "", "p", 0, (schema.TensorInfo("x", "FP32", (2, 3)),),
                          (schema.TensorInfo("y", "FP32", (2, 3)),
                           schema.TensorInfo("label", "BYTES", (2,))))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_responses_raise_protocol_error_only(data):
    """A valid response cut, with bytes changed, or with a data type renamed: decoded
    right, or refused with ProtocolError; never another exception."""
    payload = bytearray(_valid_response())
    how = data.draw(st.sampled_from(["cut", "flip", "datatype"]))
    if how == "cut":
        payload = payload[:data.draw(st.integers(0, len(payload) - 1))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
    else:
        payload = bytearray(bytes(payload).replace(b"FP32", data.draw(
            st.sampled_from([b"FP64", b"XX32", b"INT8", b"BF16"]))))
    for info in (None, _INFO):
        with contextlib.suppress(offload.ProtocolError):
            codec.decode_response(pb, bytes(payload), info)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_shared_memory_answers_that_do_not_fit_raise_protocol_error(payload):
    from multiprocessing import shared_memory

    memory = shared_memory.SharedMemory(create=True, size=4096)
    try:
        region = shm.Region("r", memory, 4096)
        where = shm.Layout({"x": (0, 24)}, {"y": (64, 24, (2, 3))}, 128)
        with contextlib.suppress(offload.ProtocolError):
            shm.read_outputs(pb, payload, region, where, _INFO)
    finally:
        memory.close()
        memory.unlink()


def test_empty_and_unexpected_responses_are_protocol_errors():
    with pytest.raises(offload.ProtocolError, match="has no outputs"):
        codec.decode_response(pb, pb.ModelInferResponse(model_name="m").SerializeToString(),
                                _INFO)
    stray = pb.ModelInferResponse(model_name="m")
    stray.outputs.add(name="z", datatype="FP32", shape=[1])
    stray.raw_output_contents.append(b"\0\0\0\0")
    with pytest.raises(offload.ProtocolError, match="the model declares"):
        codec.decode_response(pb, stray.SerializeToString(), _INFO)


# ------------------------------------------------------------------ small ones
@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**23 - 1).filter(bool), st.booleans())
def test_bfloat16_keeps_every_nan_a_nan(mantissa, negative):
    bits = np.uint32((0xFF800000 if negative else 0x7F800000) | mantissa)
    value = np.array([bits], dtype="<u4").view("<f4")
    assert np.isnan(value[0])
    assert np.isnan(dtypes.bf16_bytes_to_float32(dtypes.float32_to_bf16_bytes(value))[0])


def test_an_address_without_a_port_takes_8001():
    assert parse_servers("localhost, gpu1.example.org:9001,[::1], ::1, unix:/tmp/s") == [
        "localhost:8001", "gpu1.example.org:9001", "[::1]:8001", "unix:/tmp/s"]
    assert parse_servers(["10.0.0.7"]) == ["10.0.0.7:8001"]


def _offload_infer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "offload.cli", "infer", "mlp", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_offload_infer_says_in_one_line_what_is_wrong_with_a_file(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not arrays")
    single = tmp_path / "x.npy"
    np.save(single, np.ones((2, tm.N_FEATURES), np.float32))
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([{"a": 1}, None], dtype=np.object_))
    good = tmp_path / "in.npz"
    np.savez(good, x=np.ones((2, tm.N_FEATURES), np.float32))
    unreachable = ["--server", "127.0.0.1:1", "--timeout", "2"]
    cases = {
        (str(tmp_path / "missing.npz"),): "no such file",
        (str(text),): "not a .npz file",
        (str(single),): "a single array (.npy file)",
        (str(objects),): "cannot be read without pickle",
        (str(good), "--output", str(tmp_path / "nowhere" / "out.npz")): "does not exist",
    }
    for args, problem in cases.items():
        result = _offload_infer("--input", *args, *unreachable)
        assert result.returncode == 1, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert problem in lines[0], lines[0]
        assert Path(args[-1]).name in lines[0], lines[0]
