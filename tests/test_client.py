"""The offload client against real embedded servers: results, batching, async, Batcher,
data types, every kind of bad input, unreachable and slow servers, credentials."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tiny_models as tm
from helpers import closed_address, settled_count

import offload
from offload_server import LocalServer, ServerTLS


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("client-repo")
    tm.export_onnx_mlp(repo, "mlp", extra="dynamic_batching { max_queue_delay_microseconds: 2000 }")
    tm.export_onnx_dtypes(repo, "dtypes")
    tm.export_onnx_constituent_sum(repo)
    tm.export_echo(repo, "echo_bytes", "TYPE_STRING")
    tm.export_echo(repo, "echo_fp32", "TYPE_FP32")
    tm.export_echo(repo, "slow", "TYPE_FP32", sleep_s=2.0)
    return repo


@pytest.fixture(scope="module")
def server(repo: Path):
    with LocalServer(repo) as running:
        yield running


@pytest.fixture
def client(server: LocalServer):
    with offload.Client(server.grpc_url, timeout=30) as connected:
        yield connected


def _x(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, tm.N_FEATURES)).astype(np.float32)


# ------------------------------------------------------------------ results
def test_model_metadata_is_cached(client):
    model = client.model("mlp")
    assert client.model("mlp") is model
    assert [t.name for t in model.inputs] == ["x"]
    assert model.inputs[0].shape == (-1, tm.N_FEATURES)
    assert model.inputs[0].dtype == np.float32
    assert [t.name for t in model.outputs] == ["y"]
    assert model.max_batch_size == 1024


@pytest.mark.parametrize("rows", [1, 7, 3000])
def test_infer_matches_in_process(client, reference, rows):
    x = _x(rows, rows)
    served = client.model("mlp").infer(x=x)["y"]
    assert served.shape == (rows, tm.N_OUT)
    np.testing.assert_allclose(served, reference(x)["y"], rtol=1e-5, atol=1e-5)


def test_batch_over_max_is_split_pipelined_and_reassembled_in_order(client, reference):
    model = client.model("mlp")
    before = model.stats()
    x = _x(2500, 9)
    np.testing.assert_allclose(model.infer({"x": x})["y"], reference(x)["y"], rtol=1e-5,
                               atol=1e-5)
    inferences = settled_count(lambda: model.stats().inferences, before.inferences + 2500)
    assert inferences - before.inferences == 2500
    assert model.stats().requests - before.requests == 3  # 1024 + 1024 + 452


def test_submit_from_many_threads(client, reference):
    model = client.model("mlp")
    inputs = [_x(1 + i % 5, i) for i in range(64)]
    futures: list = [None] * len(inputs)

    def work(start: int) -> None:
        for i in range(start, len(inputs), 8):
            futures[i] = model.submit(x=inputs[i])

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for x, future in zip(inputs, futures, strict=True):
        np.testing.assert_allclose(future.result(timeout=30)["y"], reference(x)["y"],
                                   rtol=1e-5, atol=1e-5)


def test_ragged_entries_one_request_each(client):
    rng = np.random.default_rng(4)
    entries = [{"constituents": rng.normal(size=(1, n, 4)).astype(np.float32)}
               for n in (3, 17, 1, 64, 9)]
    results = client.model("constituent_sum").infer_ragged(entries)
    for entry, result in zip(entries, results, strict=True):
        np.testing.assert_allclose(result["jet"], entry["constituents"].sum(1), rtol=1e-5,
                                   atol=1e-6)


def test_async_client_mirrors_the_sync_one(server, reference):
    async def run():
        async with offload.AsyncClient(server.grpc_url) as client:
            model = await client.model("mlp")
            x = _x(2100, 5)
            whole = await model.infer(x=x)
            ragged = await model.infer_ragged([{"x": _x(n, n)} for n in (1, 2, 3)])
            assert await client.ready()
            return x, whole, ragged

    x, whole, ragged = asyncio.run(run())
    np.testing.assert_allclose(whole["y"], reference(x)["y"], rtol=1e-5, atol=1e-5)
    for n, result in zip((1, 2, 3), ragged, strict=True):
        np.testing.assert_allclose(result["y"], reference(_x(n, n))["y"], rtol=1e-5, atol=1e-5)


def test_batcher_coalesces_calls_from_many_threads(client, reference):
    model = client.model("mlp")
    before = model.stats()
    calls = [_x(1 + i % 3, 100 + i) for i in range(200)]
    results: list = [None] * len(calls)
    with offload.Batcher(model, max_delay=0.01) as batcher:
        def work(start: int) -> None:
            for i in range(start, len(calls), 16):
                results[i] = batcher.infer(x=calls[i])

        threads = [threading.Thread(target=work, args=(s,)) for s in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for x, result in zip(calls, results, strict=True):
        np.testing.assert_allclose(result["y"], reference(x)["y"], rtol=1e-5, atol=1e-5)
    sent = model.stats().requests - before.requests
    assert sent < len(calls) / 2, f"{sent} requests for {len(calls)} calls: nothing coalesced"


# ------------------------------------------------------------------ data types
def test_numeric_types_round_trip(client):
    rng = np.random.default_rng(2)
    inputs = {"a": rng.normal(size=(4, 3)).astype(np.float32),
              "b": rng.normal(size=(4, 3)).astype(np.float16),
              "c": rng.integers(-9, 9, (4, 3), dtype=np.int32),
              "d": rng.integers(-2**40, 2**40, (4, 3), dtype=np.int64),
              "e": rng.integers(0, 2, (4, 3)).astype(bool)}
    served = client.model("dtypes").infer(**inputs)
    for name, expected in tm.dtype_reference(**inputs).items():
        assert served[name].dtype == expected.dtype
        np.testing.assert_array_equal(served[name], expected)


def test_bytes_round_trip(client):
    values = np.array([b"jet", b"", b"\x00\xffbinary", "µ-on".encode()], dtype=object)
    served = client.model("echo_bytes").infer(INPUT0=values)["OUTPUT0"]
    assert served.dtype == object
    assert list(served) == list(values)


def test_big_endian_and_non_contiguous_inputs_are_converted(client, reference):
    x = _x(6, 1)
    wide = np.repeat(x, 2, axis=1)[:, ::2]  # a strided view
    assert not wide.flags.c_contiguous
    swapped = x.astype(">f4")
    model = client.model("mlp")
    for value in (wide, swapped):
        np.testing.assert_allclose(model.infer(x=value)["y"], reference(x)["y"], rtol=1e-5,
                                   atol=1e-5)


def test_outputs_are_read_only_views(client):
    result = client.model("echo_fp32").infer(INPUT0=np.arange(5, dtype=np.float32))["OUTPUT0"]
    assert not result.flags.writeable
    np.testing.assert_array_equal(result, np.arange(5))


def test_gzip_compression(server, reference):
    with offload.Client(server.grpc_url, compression="gzip") as client:
        x = _x(300, 3)
        np.testing.assert_allclose(client.model("mlp").infer(x=x)["y"], reference(x)["y"],
                                   rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ bad input
BAD_INPUTS = {
    "wrong dtype": ({"x": _x(2).astype(np.float64)},
                    "model 'mlp', input 'x': expected FP32 (float32), got float64"),
    "missing input": ({}, "model 'mlp': missing 'x' FP32 [-1, 8]"),
    "misnamed input": ({"features": _x(2)}, "missing 'x' FP32 [-1, 8]; unknown 'features'"),
    "extra input": ({"x": _x(2), "mask": _x(2)}, "unknown 'mask'"),
    "wrong rank": ({"x": _x(2)[None]}, "expected shape [-1, 8] (-1 = any), got [1, 2, 8]"),
    "wrong shape": ({"x": _x(2)[:, :5]}, "expected shape [-1, 8] (-1 = any), got [2, 5]"),
    "empty batch": ({"x": _x(2)[:0]}, "empty tensor [0, 8]"),
    "non-finite": ({"x": np.where(np.eye(2, 8) > 0, np.inf, 0).astype(np.float32)},
                   "2 non-finite value(s)"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_before_sending(client, case):
    inputs, message = BAD_INPUTS[case]
    model = client.model("mlp")
    sent = model.stats().requests
    with pytest.raises(offload.InvalidInputError) as raised:
        model.infer(inputs)
    assert message in str(raised.value)
    assert raised.value.model == "mlp"
    assert model.stats().requests == sent  # nothing went out


def test_batch_size_mismatch_between_inputs(client):
    inputs = {"a": np.zeros((2, 3), np.float32), "b": np.zeros((3, 3), np.float16),
              "c": np.zeros((2, 3), np.int32), "d": np.zeros((2, 3), np.int64),
              "e": np.zeros((2, 3), bool)}
    with pytest.raises(offload.InvalidInputError, match=r"inputs disagree on the batch size "
                       r"\('a' 2, 'b' 3"):
        client.model("dtypes").infer(**inputs)


def test_non_finite_values_may_be_sent_when_asked(server):
    with offload.Client(server.grpc_url, check_finite=False) as client:
        x = np.full((1, 4), np.nan, np.float32)
        assert np.isnan(client.model("echo_fp32").infer(INPUT0=x[0])["OUTPUT0"]).all()


def test_unknown_model_and_version(client, server):
    # The model index needs the server's token: a client without it says so ...
    with pytest.raises(offload.ModelNotFoundError,
                       match=r"model 'nope'.*the server has: \(its model index needs"):
        client.model("nope")
    with pytest.raises(offload.ModelNotFoundError, match="mlp"):
        client.model("mlp", version=7)
    # ... and one with it lists what the server has.
    with offload.Client(server.grpc_url, token=server.token) as holder, \
            pytest.raises(offload.ModelNotFoundError, match=r"the server has: .*mlp"):
        holder.model("nope")


def test_message_over_the_limit_is_refused_locally(server):
    with offload.Client(server.grpc_url, check_finite=False) as client:
        model = client.model("echo_fp32")
        huge = np.zeros(2**29 + 1, np.float32)  # 2 GiB + 4 B, never touched
        with pytest.raises(offload.MessageTooLargeError, match="exceeds gRPC's 2 GiB"):
            model.infer(INPUT0=huge)
        assert model.stats().requests == 0


# ------------------------------------------------------------------ servers
def test_unreachable_server_raises_after_retries():
    started = time.monotonic()
    with offload.Client(closed_address(), retries=2, timeout=10,
                        backoff=offload.Backoff(base=0.01)) as client, \
            pytest.raises(offload.ServerUnavailableError, match="unavailable"):
        client.model("mlp")
    assert time.monotonic() - started < 10


def test_deadline(client):
    model = client.model("slow")
    started = time.monotonic()
    with pytest.raises(offload.DeadlineExceededError, match=r"model 'slow'.*deadline"):
        model.infer(INPUT0=np.ones(3, np.float32), timeout=0.5)
    assert time.monotonic() - started < 1.9  # well before the model's 2 s


def test_no_server_given():
    with pytest.raises(offload.ServerUnavailableError, match="OFFLOAD_SERVERS"):
        offload.Client([])


def test_servers_from_environment(server, monkeypatch):
    monkeypatch.setenv("OFFLOAD_SERVERS", f"{closed_address()}, {server.grpc_url}")
    with offload.Client(backoff=offload.Backoff(base=0.01)) as client:
        assert len(client.servers) == 2
        assert client.model("mlp").infer(x=_x(2))["y"].shape == (2, tm.N_OUT)


def test_restricted_protocol_header(repo):
    secret = "s3cret-for-test"
    with LocalServer(repo, models=["mlp"],
                     extra_args=[f"--grpc-restricted-protocol=inference:offload-token={secret}"]
                     ) as restricted:
        header = {"triton-grpc-protocol-offload-token": secret}
        with offload.Client(restricted.grpc_url, headers=header) as client:
            assert client.model("mlp").infer(x=_x(1))["y"].shape == (1, tm.N_OUT)
        with offload.Client(restricted.grpc_url) as client:
            model = client.model("mlp")  # metadata is not restricted, inference is
            with pytest.raises(offload.AuthenticationError,
                               match="expecting header 'triton-grpc-protocol-offload-token'"):
                model.infer(x=_x(1))
            assert model.stats().retries == 0
            assert secret not in str(model.stats())


def test_local_fallback_starts_and_stops_an_embedded_server(repo):
    with offload.Client(closed_address(), fallback="local", repository=str(repo), retries=1,
                        backoff=offload.Backoff(base=0.01), timeout=120) as client:
        y = client.model("mlp").infer(x=_x(3))["y"]
        assert y.shape == (3, tm.N_OUT)
        # A model asked for later is loaded into the running fallback server on demand.
        echoed = client.model("echo_fp32").infer(INPUT0=np.arange(3, dtype=np.float32))
        np.testing.assert_array_equal(echoed["OUTPUT0"], np.arange(3))
        local = client._local_server
        assert local is not None
        assert local.running
    assert not local.running


# ------------------------------------------------------------------ command line
def test_command_line_models_infer_stats(server, reference, tmp_path):
    import subprocess
    import sys

    offload_cli = [sys.executable, "-m", "offload.cli"]
    refused = subprocess.run([*offload_cli, "models", "--server", server.grpc_url],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1  # the model index needs the server's token
    assert "model-repository API of this server needs its token" in refused.stderr
    listed = subprocess.run([*offload_cli, "models", "--server", server.grpc_url,
                             "--token-file", str(server.token_file)],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert any(line.split()[:3] == ["mlp", "1", "READY"] for line in listed.stdout.splitlines())
    x = _x(5, 8)
    np.savez(tmp_path / "in.npz", x=x)
    inferred = subprocess.run([*offload_cli, "infer", "mlp", "--input", str(tmp_path / "in.npz"),
                               "--output", str(tmp_path / "out.npz"), "--server",
                               server.grpc_url], capture_output=True, text=True, timeout=60)
    assert inferred.returncode == 0, inferred.stderr
    assert "y: float32 [5, 3]" in inferred.stdout
    with np.load(tmp_path / "out.npz") as out:
        np.testing.assert_allclose(out["y"], reference(x)["y"], rtol=1e-5, atol=1e-5)
    stats = subprocess.run([*offload_cli, "stats", "mlp", "--server", server.grpc_url],
                           capture_output=True, text=True, timeout=60)
    assert stats.returncode == 0
    assert "per request: queue" in stats.stdout
    np.savez(tmp_path / "bad.npz", features=x)
    refused = subprocess.run([*offload_cli, "infer", "mlp", "--input", str(tmp_path / "bad.npz"),
                              "--server", server.grpc_url], capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 1
    assert "offload infer: error: model 'mlp': missing 'x'" in refused.stderr


def test_prometheus_metrics(client):
    prometheus_client = pytest.importorskip("prometheus_client")
    import offload.metrics

    registry = prometheus_client.CollectorRegistry()
    offload.metrics._metrics = None  # a fresh registry for this test
    offload.metrics.enable(registry)
    try:
        client.model("mlp").infer(x=_x(3))
        with pytest.raises(offload.InvalidInputError):
            client.model("mlp").infer(x=_x(3).astype(np.float64))
    finally:
        offload.metrics._metrics = None
    sample = registry.get_sample_value
    assert sample("offload_inferences_total", {"model": "mlp"}) == 3
    assert sample("offload_failures_total", {"model": "mlp"}) == 1
    assert sample("offload_request_seconds_count", {"model": "mlp"}) == 1


@pytest.mark.skipif(__import__("shutil").which("openssl") is None, reason="needs openssl")
def test_tls(repo, tmp_path):
    import subprocess

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    with LocalServer(repo, models=["mlp"], tls=ServerTLS(cert, key)) as secured:
        with offload.Client(secured.grpc_url, tls=offload.TLS(root_certificates=str(cert))
                            ) as client:
            assert client.model("mlp").infer(x=_x(2))["y"].shape == (2, tm.N_OUT)
        with offload.Client(secured.grpc_url, retries=1, timeout=5,
                            backoff=offload.Backoff(base=0.01)) as plain, \
                pytest.raises(offload.ServerUnavailableError):
            plain.model("mlp")


def test_shared_memory_with_a_server_on_this_host(server, reference):
    with offload.Client(server.grpc_url, shared_memory=True, token=server.token) as client:
        model = client.model("mlp")
        for rows in (1, 2500):  # one region, then split pieces reusing regions
            x = _x(rows, rows)
            np.testing.assert_allclose(model.infer(x=x)["y"], reference(x)["y"], rtol=1e-5,
                                       atol=1e-5)
        x = _x(7, 3)
        np.testing.assert_allclose(model.submit(x=x).result()["y"], reference(x)["y"],
                                   rtol=1e-5, atol=1e-5)
        assert model.stats().bytes_sent < 4096  # the tensors did not travel in the messages
        regions = [r.memory.name for r in client._transport._regions._all]
        assert regions
    from pathlib import Path as _Path

    assert not any((_Path("/dev/shm") / name).exists() for name in regions)  # cleaned up
    with pytest.raises(ValueError, match="exactly one server on this host"):
        offload.Client(["10.0.0.1:8001"], shared_memory=True)


def test_version_pinning_and_keepalive(server, reference):
    with offload.Client(server.grpc_url, keepalive=30) as client:
        pinned = client.model("mlp", version=1)
        assert pinned.version == "1"
        x = _x(2)
        np.testing.assert_allclose(pinned.infer(x=x)["y"], reference(x)["y"], rtol=1e-5,
                                   atol=1e-5)
        latest = client.model("mlp")
        np.testing.assert_allclose(latest.infer(x=x, version=1)["y"], reference(x)["y"],
                                   rtol=1e-5, atol=1e-5)
        with pytest.raises(offload.ModelNotFoundError):
            latest.infer(x=x, version=3)


def test_bf16_and_bytes_encodings():
    from offload import dtypes

    values = np.array([1.0, -2.5, 3.140625, 1e-3, 65504.0], np.float32)
    raw = dtypes.encode("BF16", values)
    assert len(raw) == 2 * values.size
    back = dtypes.decode("BF16", raw, [values.size])
    np.testing.assert_allclose(back, values, rtol=2**-8)  # bfloat16 keeps 8 bits
    encoded = dtypes.encode("BYTES", np.array([b"ab", b""], dtype=object))
    assert bytes(encoded) == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"
    with pytest.raises(ValueError, match="malformed BYTES tensor"):
        dtypes.deserialize_bytes(b"\x05\x00\x00\x00ab")


def test_health_probe(server):
    dead = closed_address()
    with offload.Client([server.grpc_url, dead]) as client:
        assert client.health(timeout=2) == {server.grpc_url: True, dead: False}
        assert client.ready()


def test_finite_check_catches_every_kind_of_non_finite_value():
    from offload.inputs import _all_finite

    # Both ways of checking: a few elements summed in Python, more by numpy/BLAS; each on
    # contiguous arrays and on strided views.
    for size in (1, 4, 64, 65, 10_000):
        for dtype in (np.float16, np.float32, np.float64):
            values = np.ones((size, 2), dtype)
            assert all(_all_finite(v) for v in (values, values.T, values[:, 1])), (size, dtype)
            for bad in ((np.nan,), (np.inf,), (-np.inf,), (np.inf, -np.inf)):
                spoiled = values.copy()
                spoiled.reshape(-1)[-len(bad):] = bad  # Inf and -Inf: a sum of NaN
                for view in (spoiled, spoiled.T, spoiled[:, 1]):  # each has the last one
                    assert not _all_finite(view), (size, dtype, bad, view.shape)
        for dtype in (np.float32, np.float64):  # finite, but sums overflow
            huge = np.full(size, np.finfo(dtype).max / 2, dtype)
            assert _all_finite(huge), (size, dtype)


def test_request_head_written_directly_equals_protobufs_serialisation():
    from offload import protocol, wire

    cases = [("m", "", [("x", "FP32", (3, 8))]),
             ("jet_tagger", "2", [("points", "FP32", (1, 128, 2)), ("mask", "BOOL", ())]),
             ("big", "", [("a", "INT64", (2**40, 300))])]
    for name, version, inputs in cases:
        message = protocol.service_pb2.ModelInferRequest(model_name=name, model_version=version)
        for tensor, datatype, shape in inputs:
            message.inputs.add(name=tensor, datatype=datatype, shape=shape)
        assert wire.request_head(name, version, inputs) == message.SerializeToString()


def test_full_queue_is_retried_with_backoff_then_reported_as_overload(tmp_path):
    tm.export_echo(tmp_path, "queue_of_one", "TYPE_FP32", max_batch_size=4, dims=(4,),
                   sleep_s=0.3,
                   extra="dynamic_batching { default_queue_policy { max_queue_size: 1 } }")
    x = np.ones((1, 4), np.float32)
    with LocalServer(tmp_path) as busy:
        with offload.Client(busy.grpc_url, retries=30, timeout=60,
                            backoff=offload.Backoff(base=0.05, cap=0.5)) as patient:
            model = patient.model("queue_of_one")
            futures = [model.submit(INPUT0=x) for _ in range(6)]
            for future in futures:  # all get through, later
                np.testing.assert_array_equal(future.result(timeout=60)["OUTPUT0"], x)
            assert model.stats().retries > 0
        with offload.Client(busy.grpc_url, retries=0) as impatient:
            model = impatient.model("queue_of_one")
            futures = [model.submit(INPUT0=x) for _ in range(6)]
            errors = [f.exception(timeout=60) for f in futures]
            refused = [e for e in errors if e is not None]
            assert refused
            assert all(isinstance(e, offload.ServerOverloadedError) for e in refused)
            assert "queue is full" in str(refused[0])
