"""The bad-input matrix, both sides.

Client side: every kind of bad input is refused by `offload` before anything is sent, with
the documented exception. Server side: the same mistakes sent as hand-built requests,
bypassing the client's checks, are refused by the real server with a status the client
turns into the documented exception; the server stays up, and another client streaming
valid requests all along gets every one of its results, right and in order.
"""

from __future__ import annotations

import struct
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import tiny_models as tm

import offload
from offload import protocol
from offload_server import LocalServer

pb = protocol.service_pb2
N = tm.N_FEATURES
MAX_BATCH = 16


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("bad-input-repo")
    tm.export_onnx_mlp(repo, "mlp", config_body=tm.mlp_config(
        "onnxruntime", "x", "y", max_batch_size=MAX_BATCH,
        extra="dynamic_batching { max_queue_delay_microseconds: 500 }"))
    tm.export_echo(repo, "echo_bytes", "TYPE_STRING", max_batch_size=8, dims=(2,))
    tm.export_echo(repo, "echo_fp32", "TYPE_FP32", dims=(-1,))  # no batching: any length
    tm.export_echo(repo, "slow_queue_of_four", "TYPE_FP32", max_batch_size=4, dims=(4,),
                   sleep_s=0.05,
                   extra="dynamic_batching { default_queue_policy { max_queue_size: 4 } }")
    return repo


@pytest.fixture(scope="module")
def server(repo):
    with LocalServer(repo) as running:
        yield running


def _x(rows: int, value: float = 0.5) -> np.ndarray:
    return np.full((rows, N), value, np.float32)


# ------------------------------------------------------------------ client side
CLIENT_CASES = {
    "misnamed": ({"features": _x(2)}, offload.InvalidInputError, "unknown 'features'"),
    "missing": ({}, offload.InvalidInputError, "missing 'x' FP32 [-1, 8]"),
    "extra": ({"x": _x(2), "y": _x(2)}, offload.InvalidInputError, "unknown 'y'"),
    "dtype": ({"x": _x(2).astype(np.float16)}, offload.InvalidInputError,
              "expected FP32 (float32), got float16"),
    "integers for floats": ({"x": _x(2).astype(np.int32)}, offload.InvalidInputError,
                            "got int32"),
    "rank": ({"x": _x(2)[0]}, offload.InvalidInputError, "expected shape [-1, 8]"),
    "shape": ({"x": np.zeros((2, N + 1), np.float32)}, offload.InvalidInputError,
              "got [2, 9]"),
    "zero dimension": ({"x": np.zeros((2, 0), np.float32)}, offload.InvalidInputError,
                       "empty tensor [2, 0]"),
    "empty batch": ({"x": _x(0)}, offload.InvalidInputError, "empty tensor [0, 8]"),
    "NaN": ({"x": np.where(np.eye(2, N) > 0, np.nan, 1).astype(np.float32)},
            offload.InvalidInputError, "non-finite"),
    "Inf": ({"x": np.full((1, N), -np.inf, np.float32)}, offload.InvalidInputError,
            "non-finite"),
    "scalar": ({"x": 3.0}, offload.InvalidInputError, "expected shape [-1, 8]"),
    "ragged list": ({"x": [[1.0, 2.0], [3.0]]}, offload.InvalidInputError,
                    "does not convert to a FP32 array"),
    "strings for floats": ({"x": [["a"] * N]}, offload.InvalidInputError,
                           "does not convert to a FP32 array"),
}


@pytest.mark.parametrize("case", list(CLIENT_CASES))
def test_client_refuses_before_sending(server, case):
    inputs, error, message = CLIENT_CASES[case]
    with offload.Client(server.grpc_url, check_finite=True) as client:
        model = client.model("mlp")
        with pytest.raises(error) as refused:
            model.infer(inputs)
        assert message in str(refused.value)
        assert "model 'mlp'" in str(refused.value)
        assert model.stats().requests == 0  # nothing was sent


def test_huge_dimension_is_refused_before_anything_is_built(server):
    huge = np.broadcast_to(np.float32(0), (2**29 + 1,))  # 2 GiB of zeros taking no memory
    with offload.Client(server.grpc_url) as client:
        model = client.model("echo_fp32")
        with pytest.raises(offload.MessageTooLargeError, match=r"model 'echo_fp32'.*2 GiB"):
            model.infer(INPUT0=huge)
        with pytest.raises(offload.MessageTooLargeError):
            model.submit(INPUT0=huge)  # at submit(), not later through the future
        assert model.stats().requests == 0


def test_a_split_call_keeps_a_bounded_window_in_flight(server):
    """A batch split into 40 requests against a model whose queue holds 4: with the window
    at 4 nothing overflows the queue; without a window most pieces would be refused."""
    x = np.arange(160 * 4, dtype=np.float32).reshape(160, 4)
    with offload.Client(server.grpc_url, retries=0, pipeline=4) as client:
        model = client.model("slow_queue_of_four")
        np.testing.assert_array_equal(model.infer(INPUT0=x)["OUTPUT0"], x)
        assert model.stats().requests == 40
        assert model.stats().failures == 0
    with offload.Client(server.grpc_url, retries=0, pipeline=40) as flooding, \
            pytest.raises(offload.ServerOverloadedError):
        flooding.model("slow_queue_of_four").infer(INPUT0=x)


def test_client_refuses_bytes_elements_that_are_not_bytes_or_str(server):
    with offload.Client(server.grpc_url) as client:
        model = client.model("echo_bytes")
        for item in (5, None, 1.5, [b"a"]):
            value = np.array([[b"ok", b"ok"]], dtype=np.object_)
            value[0, 1] = item
            with pytest.raises(offload.InvalidInputError,
                               match=r"model 'echo_bytes', input 'INPUT0': element 1 is"):
                model.infer(INPUT0=value)
        assert model.stats().requests == 0


def test_what_is_accepted_is_served_right(server, reference):
    """Big-endian (e.g. from ROOT), non-contiguous views and a batch over max_batch_size are
    not errors: converted or split, and served correctly."""
    with offload.Client(server.grpc_url) as client:
        model = client.model("mlp")
        wide = np.linspace(-1, 1, 5 * 2 * N, dtype=np.float32).reshape(5, 2 * N)
        cases = [wide.astype(">f4")[:, :N], wide[:, ::2], np.asfortranarray(wide[:, :N]),
                 np.tile(wide[:, :N], (9, 1))]  # 45 rows > 16: split into 3 requests
        for x in cases:
            np.testing.assert_allclose(model.infer(x=x)["y"], reference(x.astype(np.float32))["y"],
                                       rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ server side
def _request(model: str = "mlp", shape=(2, N), datatype: str = "FP32",
             name: str = "x", content: bytes | None = None, version: str = "",
             extra_input: bool = False) -> bytes:
    message = pb.ModelInferRequest(model_name=model, model_version=version)
    message.inputs.add(name=name, datatype=datatype, shape=list(shape))
    count = int(np.prod([max(d, 0) for d in shape])) if len(shape) else 1
    message.raw_input_contents.append(
        content if content is not None else np.zeros(min(count, 4096), np.float32).tobytes())
    if extra_input:
        message.inputs.add(name="mask", datatype="FP32", shape=[2, N])
        message.raw_input_contents.append(np.zeros((2, N), np.float32).tobytes())
    return message.SerializeToString()


def _bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


SERVER_CASES = {
    "misnamed": (_request(name="features"), offload.InvalidInputError),
    "missing": (pb.ModelInferRequest(model_name="mlp").SerializeToString(),
                offload.InvalidInputError),
    "extra": (_request(extra_input=True), offload.InvalidInputError),
    "dtype": (_request(datatype="FP64", content=np.zeros((2, N)).tobytes()),
              offload.InvalidInputError),
    "rank": (_request(shape=(2, N, 1)), offload.InvalidInputError),
    "shape": (_request(shape=(2, N + 1), content=np.zeros((2, N + 1), np.float32).tobytes()),
              offload.InvalidInputError),
    "content shorter than shape": (_request(content=b"\0" * 10), offload.InvalidInputError),
    "negative dimension": (_request(shape=(-3, N)), offload.InvalidInputError),
    "huge dimension": (_request(shape=(2**40, N)), offload.InvalidInputError),
    "zero batch": (_request(shape=(0, N), content=b""), offload.InvalidInputError),
    "batch over max_batch_size": (
        _request(shape=(MAX_BATCH + 1, N),
                 content=np.zeros((MAX_BATCH + 1, N), np.float32).tobytes()),
        offload.InvalidInputError),
    "unknown model": (_request(model="nope"), offload.ModelNotFoundError),
    "unknown version": (_request(version="7"), offload.ModelNotFoundError),
    "malformed BYTES": (
        _request(model="echo_bytes", name="INPUT0", datatype="BYTES", shape=(1, 2),
                 content=struct.pack("<I", 1000) + b"short"), offload.InvalidInputError),
    "BYTES count off": (
        _request(model="echo_bytes", name="INPUT0", datatype="BYTES", shape=(1, 2),
                 content=_bytes_tensor([b"one"])), offload.InvalidInputError),
}


def test_server_refuses_each_bad_request_stays_up_and_other_clients_are_unaffected(
        server, reference):
    stop = threading.Event()
    ledger: list[tuple[int, np.ndarray, dict | BaseException]] = []

    def other_client() -> None:
        with offload.Client(server.grpc_url, retries=0) as client:
            model = client.model("mlp")
            index = 0
            while not stop.is_set() or index < 20:
                x = _x(1 + index % 4, (index % 50) / 50)
                try:
                    ledger.append((index, x, model.infer(x=x)))
                except offload.OffloadError as error:
                    ledger.append((index, x, error))
                index += 1

    streaming = threading.Thread(target=other_client)
    streaming.start()
    channel = grpc.insecure_channel(server.grpc_url)
    infer = protocol.method(channel, "ModelInfer")
    outcomes = {}
    try:
        for case, (request, expected) in SERVER_CASES.items():
            with pytest.raises(grpc.RpcError) as refused:
                infer(request, timeout=30)
            error = protocol.translate(refused.value, model="mlp", server=server.grpc_url)
            outcomes[case] = (type(error).__name__, refused.value.details())
            assert isinstance(error, expected), (case, outcomes[case])
            assert server.ready(), f"server not ready after {case}"
    finally:
        stop.set()
        streaming.join(timeout=60)
        channel.close()
    # The other client: every request answered, right, in order; none failed.
    assert [index for index, _, _ in ledger] == list(range(len(ledger)))
    assert len(ledger) >= 20
    for index, x, result in ledger:
        assert not isinstance(result, BaseException), (index, result)
        np.testing.assert_allclose(result["y"], reference(x)["y"], rtol=1e-5, atol=1e-6)
    # And the server answers a valid request after the whole matrix.
    with offload.Client(server.grpc_url) as client:
        assert client.model("echo_bytes").infer(
            INPUT0=np.array([[b"a", b"b"]], dtype=np.object_))["OUTPUT0"].shape == (1, 2)


def test_server_passes_nan_through_when_the_client_allows_it(server):
    """The policy for non-finite values: refused by default; with check_finite=False they
    are sent, and the model's result is whatever the model makes of them (here NaN)."""
    with offload.Client(server.grpc_url, check_finite=False) as client:
        y = client.model("mlp").infer(x=np.full((1, N), np.nan, np.float32))["y"]
        assert np.isnan(y).all()
