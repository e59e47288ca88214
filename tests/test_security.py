"""Attacks on the embedded server, with real requests against a real server.

Each attack is made the way an attacker would, from outside the project's client: raw gRPC
calls, raw HTTP bodies, raw HTTP/2 frames. Each test also shows that the attack is real
where that can be shown safely (the same request with the credential does what the
attacker wanted), and that a client streaming valid requests meanwhile loses nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from http.client import HTTPConnection, HTTPException
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import numpy as np
import pytest
import tiny_models as tm
from helpers import free_port
from ledger import StreamingClient

import offload
from offload import protocol
from offload_server import LocalServer

pb = protocol.service_pb2
SERVICE = "/inference.GRPCInferenceService/"
SECRET = "user-token-93c1d4"  # made up for the test


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("security-repo")
    tm.export_onnx_mlp(repo, "mlp")
    tm.export_echo(repo, "echo_fp32", "TYPE_FP32", dims=(-1,))
    return repo


@pytest.fixture(scope="module")
def open_server(repo):
    """The fallback's mode: explicit model control, no user token (a generated one)."""
    with LocalServer(repo, models=["mlp", "echo_fp32"], http_port=0, metrics_port=0,
                     max_request_bytes=8 << 20, shared_memory_sweep=0.5) as server:
        yield server


@pytest.fixture(scope="module")
def token_server(repo):
    """`offload serve --token-file`: everything but health needs the user's token."""
    with LocalServer(repo, token=SECRET, http_port=0, metrics_port=0) as server:
        yield server


# ---------------------------------------------------------------- helpers
def rpc(url: str, method: str, request, token: str | None = None):
    """A raw unary call: the response message, or the grpc.RpcError."""
    response_class = getattr(pb, f"{method}Response", pb.ServerLiveResponse)
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(url) as channel:
        call = channel.unary_unary(SERVICE + method,
                                   request_serializer=type(request).SerializeToString,
                                   response_deserializer=response_class.FromString)
        try:
            return call(request, timeout=30, metadata=metadata)
        except grpc.RpcError as error:
            return error


def http(url: str, body: bytes | None = None, headers: dict | None = None,
         method: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def alive(server: LocalServer) -> bool:
    return server.running and server.ready()


def listening(pid: int) -> list[tuple[str, int]]:
    """The TCP addresses a process listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = str(fd.readlink()) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)
                if width == 8:
                    host = socket.inet_ntop(socket.AF_INET, raw[::-1])
                else:
                    host = socket.inet_ntop(socket.AF_INET6, b"".join(
                        raw[i:i + 4][::-1] for i in range(0, 16, 4)))
                found.append((host, int(port, 16)))
    return found


def peak_rss(pid: int) -> int:
    """VmHWM of a process, bytes: the most memory it ever held."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024


class RawGrpc:
    """gRPC calls made frame by frame with h2 on one connection (no gRPC library involved):
    each message sent as it is, flagged compressed (gzip) if asked. h2 checks every frame
    it gets, so a frame on a call that has ended fails the test."""

    def __init__(self, url: str) -> None:
        host, port = url.rsplit(":", 1)
        self.url = url
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.connection = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True))
        self.connection.initiate_connection()
        self.connection.update_settings(
            {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        self.connection.increment_flow_control_window(2**30)
        self.sock.sendall(self.connection.data_to_send())

    def __enter__(self) -> RawGrpc:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.sock.close()

    def call(self, path: str, message: bytes, *, compressed: bool = False,
             headers: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
        """The response's headers and trailers."""
        connection, sock = self.connection, self.sock
        stream = connection.get_next_available_stream_id()
        connection.send_headers(stream, [
            (":method", "POST"), (":scheme", "http"), (":path", path),
            (":authority", self.url), ("content-type", "application/grpc"), ("te", "trailers"),
            *((("grpc-encoding", "gzip"),) if compressed else ()), *headers])
        framed = bytes((1 if compressed else 0,)) + len(message).to_bytes(4, "big") + message
        sent, trailers = 0, {}
        done = False
        while not done:
            while sent < len(framed) and not done:
                window = min(connection.local_flow_control_window(stream),
                             connection.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk = framed[sent:sent + window]
                sent += len(chunk)
                connection.send_data(stream, chunk, end_stream=sent == len(framed))
                sock.sendall(connection.data_to_send())
            data = sock.recv(65536)
            if not data:
                break
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived) \
                        and event.stream_id == stream:
                    trailers.update((k.decode(), v.decode()) for k, v in event.headers)
                if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset) \
                        and event.stream_id == stream:
                    done = True
            sock.sendall(connection.data_to_send())
        return trailers


def raw_grpc(url: str, path: str, message: bytes, *, compressed: bool = False,
             headers: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    """One call on a connection of its own: the response's trailers."""
    with RawGrpc(url) as connection:
        return connection.call(path, message, compressed=compressed, headers=headers)


# ------------------------------------------------------------------ listeners
def test_nothing_listens_beyond_loopback_and_triton_not_on_the_network(open_server):
    assert listening(open_server.pid) == []  # Triton: private unix sockets only
    front = listening(open_server.front_pid)
    assert {port for _, port in front} == {open_server.grpc_port, open_server.http_port,
                                           open_server.metrics_port}
    assert {host for host, _ in front} == {"127.0.0.1"}
    workdir = Path(open_server.token_file).parent
    assert workdir.stat().st_mode & 0o077 == 0  # the sockets' folder: this user's alone
    assert Path(open_server.token_file).stat().st_mode & 0o077 == 0


def test_host_opens_only_grpc_to_other_hosts(repo):
    # Another loopback address stands for a wide one (0.0.0.0 would open the test's server
    # to the network): what follows --host and what stays on 127.0.0.1 is the same.
    with LocalServer(repo, models=["mlp"], host="127.0.0.2", metrics_port=0) as wide:
        front = {port: host for host, port in listening(wide.front_pid)}
        assert front[wide.grpc_port] == "127.0.0.2"
        assert front[wide.metrics_port] == "127.0.0.1"  # unless asked with metrics_host
        assert listening(wide.pid) == []


# ---------------------------------------------------------------- HTTP bodies
CRASH_BODIES = {
    "dimension 2^63-1": json.dumps({"inputs": [{
        "name": "x", "shape": [9223372036854775807, 8], "datatype": "FP32",
        "data": [0.5]}]}).encode(),
    "data nested 100,000 deep": (b'{"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32",'
                                 b'"data":' + b"[" * 100_000 + b"]" * 100_000 + b"}]}"),
}


def test_http_crash_bodies_never_reach_triton_and_the_server_stays_up(open_server, reference):
    infer = f"{open_server.http_url}/v2/models/mlp/infer"
    bearer = {"Authorization": f"Bearer {open_server.token}"}
    with StreamingClient(open_server.grpc_url) as other:
        for name, body in CRASH_BODIES.items():
            assert http(infer, body)[0] == 401, name  # no credential: refused unread
            status, answer = http(infer, body, bearer)
            assert status == 400, (name, answer)  # credential: checked, refused
            assert b"refused before reaching the server" in answer
            assert alive(open_server), name
        # A gzip body inflating to 1 GiB, a body over the limit, a chunked one: refused.
        bomb = zlib.compress(b"\0" * (64 << 20))  # (64 MiB here; the ratio is what counts)
        assert http(infer, bomb, {**bearer, "Content-Encoding": "gzip"})[0] == 415
        assert _announced_body_status(open_server, open_server.max_request_bytes + 1) == 413
    other.check(reference)
    assert alive(open_server)
    # The same front serves a valid JSON request: these refusals are not all it does.
    valid = {"inputs": [{"name": "x", "shape": [1, tm.N_FEATURES], "datatype": "FP32",
                         "data": [0.25] * tm.N_FEATURES}]}
    status, answer = http(infer, json.dumps(valid).encode(), bearer)
    assert status == 200, answer
    y = json.loads(answer)["outputs"][0]["data"]
    np.testing.assert_allclose(y, reference(np.full((1, tm.N_FEATURES), 0.25, np.float32))[
        "y"].ravel(), rtol=1e-5)


def _announced_body_status(server: LocalServer, length: int) -> int:
    """The status the HTTP front answers to headers announcing a body of `length` bytes
    (refused before any of it is sent)."""
    host, port = server.http_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     f"{server.token}\r\nContent-Length: {length}\r\n\r\n".encode())
        return int(sock.recv(4096).split(b" ", 2)[1])


class _UnixHTTP(HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=30)
        self.unix_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.unix_path)


@pytest.mark.slow
@pytest.mark.parametrize("body", list(CRASH_BODIES))
def test_each_crash_body_kills_triton_when_it_reaches_it(repo, body):
    """The control: sent to Triton's own HTTP listener (its private socket here; a network
    port, as `offload serve` had before its front), each body ends tritonserver."""
    with LocalServer(repo, models=["mlp"]) as server:
        triton_http = Path(server.triton_grpc_url.removeprefix("unix:")).parent / "http"
        connection = _UnixHTTP(triton_http)
        with contextlib.suppress(OSError, HTTPException):
            connection.request("POST", "/v2/models/mlp/infer", body=CRASH_BODIES[body])
            connection.getresponse().read()
        code = server.wait(timeout=60)
        assert code is not None
        assert code < 0, code  # killed by a signal (abort, SIGSEGV)


# ------------------------------------------------- code upload (model repository API)
def _evil_load(marker: Path) -> pb.RepositoryModelLoadRequest:
    code = textwrap.dedent(f"""
        from pathlib import Path
        Path({str(marker)!r}).write_text("ran")

        class TritonPythonModel:
            def execute(self, requests):
                return []
        """).encode()
    config = {"name": "evil", "backend": "python", "max_batch_size": 0,
              "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [1]}],
              "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [1]}]}
    request = pb.RepositoryModelLoadRequest(model_name="evil")
    request.parameters["config"].string_param = json.dumps(config)
    request.parameters["file:1/model.py"].bytes_param = code
    return request


def test_uploaded_model_code_never_runs_without_the_credential(open_server, tmp_path):
    marker = tmp_path / "evil-ran"
    request = _evil_load(marker)
    refused = rpc(open_server.grpc_url, "RepositoryModelLoad", request)
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED, refused
    wrong = rpc(open_server.grpc_url, "RepositoryModelLoad", request, token="guess")
    assert wrong.code() == grpc.StatusCode.PERMISSION_DENIED
    status, _ = http(f"{open_server.http_url}/v2/repository/models/evil/load",
                     json.dumps({"parameters": {"config": "{}"}}).encode())
    assert status == 401
    time.sleep(1)
    assert not marker.exists()
    assert "evil" not in {m.name for m in open_server.models()}
    # The attack is real: with the server's token the same request runs the uploaded code.
    loaded = rpc(open_server.grpc_url, "RepositoryModelLoad", request, token=open_server.token)
    assert not isinstance(loaded, grpc.RpcError), loaded
    assert marker.read_text() == "ran"
    unloaded = rpc(open_server.grpc_url, "RepositoryModelUnload",
                   pb.RepositoryModelUnloadRequest(model_name="evil"), token=open_server.token)
    assert not isinstance(unloaded, grpc.RpcError)


# ---------------------------------------------------------- restricted APIs
RESTRICTED = {
    "RepositoryIndex": pb.RepositoryIndexRequest(),
    "RepositoryModelLoad": pb.RepositoryModelLoadRequest(model_name="mlp"),
    "RepositoryModelUnload": pb.RepositoryModelUnloadRequest(model_name="nothing"),
    "SystemSharedMemoryStatus": pb.SystemSharedMemoryStatusRequest(),
    "SystemSharedMemoryRegister": pb.SystemSharedMemoryRegisterRequest(
        name="x", key="/x", byte_size=64),
    "SystemSharedMemoryUnregister": pb.SystemSharedMemoryUnregisterRequest(),
    "CudaSharedMemoryStatus": pb.CudaSharedMemoryStatusRequest(),
    "TraceSetting": pb.TraceSettingRequest(),
    "LogSettings": pb.LogSettingsRequest(),
}
OPEN = {
    "ServerReady": pb.ServerReadyRequest(),
    "ModelMetadata": pb.ModelMetadataRequest(name="mlp"),
    "ModelConfig": pb.ModelConfigRequest(name="mlp"),
    "ModelStatistics": pb.ModelStatisticsRequest(name="mlp"),
}


def _refusal(result) -> grpc.StatusCode | None:
    if isinstance(result, grpc.RpcError) and result.code() in (
            grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return result.code()
    return None


def test_admin_apis_need_the_generated_token(open_server):
    for method, request in RESTRICTED.items():
        assert _refusal(rpc(open_server.grpc_url, method, request)) == \
            grpc.StatusCode.UNAUTHENTICATED, method
        assert _refusal(rpc(open_server.grpc_url, method, request, token="guess")) == \
            grpc.StatusCode.PERMISSION_DENIED, method
        # With it, Triton itself answers (some of these requests are wrong on purpose).
        assert _refusal(rpc(open_server.grpc_url, method, request,
                            token=open_server.token)) is None, method
    for method, request in OPEN.items():
        assert not isinstance(rpc(open_server.grpc_url, method, request), grpc.RpcError), method
    unknown = rpc(open_server.grpc_url, "NoSuchMethod", pb.ServerLiveRequest())
    assert unknown.code() == grpc.StatusCode.UNIMPLEMENTED
    # Metrics without a user token are as open as the statistics API (loopback only).
    assert http(open_server.metrics_url)[0] == 200


def test_with_a_user_token_only_health_is_open(token_server):
    url = token_server.grpc_url
    for method, request in {**RESTRICTED, **OPEN}.items():
        if method == "ServerReady":
            assert rpc(url, method, request).ready
            continue
        assert _refusal(rpc(url, method, request)) == grpc.StatusCode.UNAUTHENTICATED, method
        assert _refusal(rpc(url, method, request, token=SECRET)) is None, method
    metrics = token_server.metrics_url
    assert http(metrics)[0] == 401
    assert http(metrics, headers={"Authorization": "Bearer guess"})[0] == 403
    status, text = http(metrics, headers={"Authorization": f"Bearer {SECRET}"})
    assert status == 200
    assert b"nv_inference_request_success" in text
    assert http(f"{token_server.http_url}/v2/health/ready")[0] == 200
    assert http(f"{token_server.http_url}/v2/models/stats")[0] == 401


# -------------------------------------------------------------- shared memory
def _regions(server: LocalServer) -> dict[str, str]:
    status = rpc(server.grpc_url, "SystemSharedMemoryStatus",
                 pb.SystemSharedMemoryStatusRequest(), token=server.token)
    return {name: region.key for name, region in status.regions.items()}


def test_shared_memory_hijack_is_refused_and_a_victim_recovers(open_server, reference):
    with StreamingClient(open_server.grpc_url, token=open_server.token, shared_memory=True,
                         minimum=60) as victim:
        deadline = time.monotonic() + 60
        while not _regions(open_server) and time.monotonic() < deadline:
            time.sleep(0.05)
        regions = _regions(open_server)
        assert regions
        for name in regions:  # unguessable: the owner's pid and start time, 128 random bits
            assert re.fullmatch(r"offload-\d+-\d+-[0-9a-f]{32}", name), name
        name, key = next(iter(regions.items()))
        # An attacker without the token can neither list, nor unregister, nor register
        # the victim's key under its own name (to have Triton write into it).
        for method, request in (
                ("SystemSharedMemoryStatus", pb.SystemSharedMemoryStatusRequest()),
                ("SystemSharedMemoryUnregister",
                 pb.SystemSharedMemoryUnregisterRequest(name=name)),
                ("SystemSharedMemoryRegister", pb.SystemSharedMemoryRegisterRequest(
                    name="mine", key=key, byte_size=4096))):
            assert _refusal(rpc(open_server.grpc_url, method, request)) == \
                grpc.StatusCode.UNAUTHENTICATED
        # Someone who has the token unregisters every region mid-run: the victim
        # registers its regions again and loses nothing.
        for _ in range(3):
            rpc(open_server.grpc_url, "SystemSharedMemoryUnregister",
                pb.SystemSharedMemoryUnregisterRequest(), token=open_server.token)
            time.sleep(0.3)
    count = victim.check(reference)
    assert count >= 60
    assert alive(open_server)


@pytest.mark.slow
def test_a_restarted_server_gets_the_regions_again_or_says_why_not(repo, reference):
    port = free_port()
    x = np.full((3, tm.N_FEATURES), 0.5, np.float32)
    first = LocalServer(repo, models=["mlp"], grpc_port=port, token=SECRET).start()
    try:
        with offload.Client(first.grpc_url, token=SECRET, shared_memory=True) as client:
            model = client.model("mlp")
            np.testing.assert_allclose(model.infer(x=x)["y"], reference(x)["y"], rtol=1e-5)
            first.kill()
            first.stop()
            # Same port, same token: the client's region is registered anew.
            with LocalServer(repo, models=["mlp"], grpc_port=port, token=SECRET):
                np.testing.assert_allclose(model.infer(x=x)["y"], reference(x)["y"], rtol=1e-5)
            # Same port, no user token: inference is open, but the shared-memory API needs
            # the new server's generated token, which this client lacks; it says so.
            with LocalServer(repo, models=["mlp"], grpc_port=port), \
                    pytest.raises(offload.AuthenticationError, match="shared-memory API"):
                model.infer(x=x)
    finally:
        first.stop()


_DYING_CLIENT = """
import sys, time, numpy as np, offload
client = offload.Client(sys.argv[1], shared_memory=True)
client.model("mlp").infer(x=np.ones((2, 8), np.float32))
print("registered", flush=True)
time.sleep(600)
"""


def test_regions_of_a_killed_client_are_unregistered(open_server):
    before = set(_regions(open_server))
    with subprocess.Popen([sys.executable, "-c", _DYING_CLIENT, open_server.grpc_url],
                          stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "OFFLOAD_TOKEN": open_server.token}) as dying:
        try:
            assert dying.stdout.readline().strip() == "registered"
            mine = {n: k for n, k in _regions(open_server).items()
                    if n.startswith(f"offload-{dying.pid}-")}
            assert mine
            assert not set(mine) & before
            dying.send_signal(signal.SIGKILL)
            dying.wait()
            deadline = time.monotonic() + 30
            while set(mine) & set(_regions(open_server)) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not set(mine) & set(_regions(open_server))
            for key in mine.values():
                assert not (Path("/dev/shm") / key.lstrip("/")).exists()
        finally:
            if dying.poll() is None:
                dying.kill()


def _gzip_bomb() -> bytes:
    """A gRPC message that inflates to 1 GiB: 1 MiB on the wire, built without the GiB."""
    squeeze = zlib.compressobj(wbits=31)  # gzip
    head = pb.ModelInferRequest(model_name="echo_fp32").SerializeToString()
    field = b"\x42" + _varint(1 << 30)  # raw_input_contents (field 8), 1 GiB long
    bomb = squeeze.compress(head + field)
    zeros = b"\0" * (16 << 20)
    for _ in range(64):
        bomb += squeeze.compress(zeros)
    bomb += squeeze.flush()
    assert len(bomb) < 2 << 20
    return bomb


# ------------------------------------------------------------ request sizes
def test_oversized_requests_are_refused_with_bounded_memory(open_server, reference):
    limit = open_server.max_request_bytes
    request = pb.ModelInferRequest(model_name="echo_fp32")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[4])  # says 16 bytes ...
    request.raw_input_contents.append(b"\0" * (256 << 20))  # ... and carries 256 MiB
    oversized = request.SerializeToString()
    bomb = _gzip_bomb()

    triton_before, front_before = peak_rss(open_server.pid), peak_rss(open_server.front_pid)
    with StreamingClient(open_server.grpc_url) as other:
        plain = rpc(open_server.grpc_url, "ModelInfer", request)
        assert plain.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"limit {limit} bytes" in plain.details()
        trailers = raw_grpc(open_server.grpc_url, SERVICE + "ModelInfer", bomb,
                            compressed=True)
        assert trailers.get("grpc-status") == "8", trailers
        assert "once inflated" in urllib.parse.unquote(trailers.get("grpc-message", ""))
        # offload's own client names what happened.
        with offload.Client(open_server.grpc_url) as client, \
                pytest.raises(offload.MessageTooLargeError, match="limit"):
            client.model("echo_fp32").infer(INPUT0=np.zeros(limit // 4 + 1, np.float32))
    other.check(reference)
    assert alive(open_server)
    grown_triton = peak_rss(open_server.pid) - triton_before
    grown_front = peak_rss(open_server.front_pid) - front_before
    assert grown_triton < 32 << 20, grown_triton  # the requests never reached Triton
    assert grown_front < 64 << 20, grown_front  # the front holds frames, not messages
    del oversized


def test_a_refused_call_leaves_its_connection_usable(open_server):
    """A refusal ends its call for the client; whatever Triton still says about that call
    stays in the front (for the client, a frame after a stream's end is a connection
    error: seen under load before the front dropped them), and the next calls on the same
    connection are answered."""
    bomb = _gzip_bomb()
    request = pb.ModelInferRequest(model_name="echo_fp32")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[4])
    request.raw_input_contents.append(np.arange(4, dtype=np.float32).tobytes())
    with RawGrpc(open_server.grpc_url) as connection:
        for _ in range(5):
            refused = connection.call(SERVICE + "ModelInfer", bomb, compressed=True)
            assert refused.get("grpc-status") == "8", refused
            answered = connection.call(SERVICE + "ModelInfer", request.SerializeToString())
            assert answered.get("grpc-status") == "0", answered
    assert alive(open_server)


def test_malformed_http2_is_refused_per_connection_and_the_server_stays_up(open_server,
                                                                          reference):
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    garbage = {
        "not HTTP/2": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "CONTINUATION without HEADERS": preface + settings
        + b"\x00\x00\x01\x09\x04\x00\x00\x00\x01\x82",
        "undecodable header block": preface + settings
        + b"\x00\x00\x02\x01\x05\x00\x00\x00\x01\xff\xff",
        "a frame longer than sent": preface + settings + b"\xff\xff\xff\x00\x00\x00\x00\x00\x01",
    }
    host, port = open_server.grpc_url.rsplit(":", 1)
    with StreamingClient(open_server.grpc_url) as other:
        for name, payload in garbage.items():
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                received = b""
                while chunk := sock.recv(65536):
                    received += chunk
            assert alive(open_server), name
    other.check(reference)


# ------------------------------------------------------------- local fallback
def test_the_fallback_server_holds_its_secret(repo, reference):
    x = np.full((2, tm.N_FEATURES), 0.1, np.float32)
    with offload.Client(f"127.0.0.1:{free_port()}", fallback="local", repository=str(repo),
                        retries=1, timeout=120) as client:
        np.testing.assert_allclose(client.model("mlp").infer(x=x)["y"], reference(x)["y"],
                                   rtol=1e-5)
        local = client._local_server
        assert {m["name"] for m in client.models()} >= {"mlp"}  # it has the token
        # Anyone else on the host reaches the port, but not the repository API.
        assert _refusal(rpc(local.grpc_url, "RepositoryIndex", pb.RepositoryIndexRequest())) \
            == grpc.StatusCode.UNAUTHENTICATED
        assert _refusal(rpc(local.grpc_url, "RepositoryModelLoad",
                            pb.RepositoryModelLoadRequest(model_name="echo_fp32"))) \
            == grpc.StatusCode.UNAUTHENTICATED


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
