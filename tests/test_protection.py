"""Protection of the embedded server: a token on every request but health checks (checked
by the server's front, through `offload serve --token-file`), TLS and mutual TLS with
certificates made for the test, and no secret in logs, outputs, error messages or any
process's command line."""

from __future__ import annotations

import logging
import signal
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tiny_models as tm
from helpers import FREE_PORTS, ServeProcess, stop_group

import offload
from offload_server import LocalServer, ServerTLS

SECRET = "tok-4f1c9e2a7b"  # made up for the test; what matters is where it must not appear


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("protected-repo")
    tm.export_onnx_mlp(repo, "mlp")
    return repo


def _x(rows: int) -> np.ndarray:
    return np.ones((rows, tm.N_FEATURES), np.float32)


def _status(url: str, data: bytes | None = None, headers: dict | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_offload_serve_with_a_token_refuses_requests_without_it(repo, tmp_path, monkeypatch,
                                                                caplog):
    token_file = tmp_path / "token"
    token_file.write_text(SECRET + "\n")
    serve = ServeProcess("--model-repository", str(repo), *FREE_PORTS,
                         "--token-file", str(token_file))
    triton_pid = None
    try:
        triton_pid = int(serve.wait_for(r"tritonserver ready \(pid (\d+)").group(1))
        grpc_url = serve.wait_for(r"gRPC\s+(\S+)  \(plain; health open").group(1)
        serve.wait_for(rf"token\s+{token_file}")
        http_url = serve.wait_for(r"HTTP\s+(\S+)").group(1)
        serve.wait_for(r"mlp .*READY")  # the model table still lists models (it has the token)
        caplog.set_level(logging.DEBUG, logger="offload")

        # No token, a wrong one: refused, at once (never retried), with a message that says
        # which header is expected and never what value.
        for token in (None, "not-the-token"):
            with offload.Client(grpc_url, token=token, retries=3) as client:
                with pytest.raises(offload.AuthenticationError,
                                   match="'authorization: Bearer <token>' or 'triton-grpc-"
                                         "protocol-offload-token'") as refused:
                    client.model("mlp")
                assert SECRET not in str(refused.value)
        # The right token, given or from the environment: served.
        with offload.Client(grpc_url, token=SECRET) as client:
            assert client.model("mlp").infer(x=_x(2))["y"].shape == (2, tm.N_OUT)
            assert SECRET not in repr(client.model("mlp").stats())
        monkeypatch.setenv("OFFLOAD_TOKEN", SECRET)
        with offload.Client(grpc_url) as client:
            assert client.model("mlp").infer(x=_x(1))["y"].shape == (1, tm.N_OUT)
        # HTTP: health stays open for probes, the rest needs the header.
        assert _status(f"{http_url}/v2/health/ready") == 200
        assert _status(f"{http_url}/v2/models/mlp") == 401
        assert _status(f"{http_url}/v2/models/mlp",
                       headers={"Authorization": "Bearer not-the-token"}) == 403
        assert _status(f"{http_url}/v2/models/mlp", headers={"offload-token": SECRET}) == 200
        assert _status(f"{http_url}/v2/models/mlp",
                       headers={"Authorization": f"Bearer {SECRET}"}) == 200

        serve.process.send_signal(signal.SIGINT)
        assert serve.process.wait(timeout=30) == 0
        output = serve.output()
        printed = " ".join(output.split())  # (rich wraps long lines)
        assert "health open; everything else needs the token" in printed
        assert "needs the token as 'Authorization: Bearer'" in printed  # metrics too
        assert "stopped." in output
        assert SECRET not in output
        assert SECRET not in caplog.text
    finally:
        if serve.process.poll() is None:
            serve.process.kill()
        if triton_pid:
            stop_group(triton_pid)


@pytest.mark.parametrize(("content", "message"), [("", "is empty"),
                                              ("a b", "printable ASCII without spaces")])
def test_offload_serve_refuses_an_unusable_token_file(repo, tmp_path, content, message):
    token_file = tmp_path / "token"
    token_file.write_text(content)
    serve = ServeProcess("--model-repository", str(repo), *FREE_PORTS,
                         "--token-file", str(token_file))
    assert serve.process.wait(timeout=60) == 2
    assert message in " ".join(serve.output().split())  # (rich wraps long lines)


def _command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_no_token_in_logs_or_on_any_command_line(repo, caplog):
    """Other users of the host read every process's command line (ps): the token reaches
    neither tritonserver's nor the front's, nor Triton's log, nor ours."""
    caplog.set_level(logging.DEBUG)
    with LocalServer(repo, token=SECRET) as server:
        assert [m.name for m in server.models()] == ["mlp"]
        log_text = Path(server.log_file).read_text()
        assert server.pid is not None
        assert server.front_pid is not None
        lines = {pid: _command_line(pid) for pid in (server.pid, server.front_pid)}
        with offload.Client(server.grpc_url, token=SECRET) as client:
            assert client.model("mlp").infer(x=_x(1))["y"].shape == (1, tm.N_OUT)
    assert "--model-repository" in lines[server.pid]  # the right processes were read ...
    assert "offload_server.front" in lines[server.front_pid]
    assert "--model-repository" in caplog.text  # ... and the command line was logged ...
    for text in (*lines.values(), caplog.text, log_text):
        assert SECRET not in text  # ... without the token anywhere


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA made for this test, a server certificate for 127.0.0.1 and a client one."""
    import trustme

    folder = tmp_path_factory.mktemp("pki")
    authority = trustme.CA()
    server_cert = authority.issue_cert("127.0.0.1", "localhost")
    client_cert = authority.issue_cert("grid-job@example.org")
    stranger = trustme.CA().issue_cert("intruder@example.org")
    files = {"ca": folder / "ca.pem", "server": folder / "server.pem",
             "client": folder / "client.pem", "stranger": folder / "stranger.pem"}
    authority.cert_pem.write_to_path(str(files["ca"]))
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(files["server"]))
    client_cert.private_key_and_cert_chain_pem.write_to_path(str(files["client"]))
    stranger.private_key_and_cert_chain_pem.write_to_path(str(files["stranger"]))
    return files


def test_mutual_tls(repo, certificates):
    pem = certificates
    with LocalServer(repo, tls=ServerTLS(pem["server"], pem["server"], client_ca=pem["ca"])
                     ) as secured:
        good = offload.TLS(root_certificates=str(pem["ca"]),
                           certificate_chain=str(pem["client"]), private_key=str(pem["client"]))
        with offload.Client(secured.grpc_url, tls=good) as client:
            assert client.model("mlp").infer(x=_x(3))["y"].shape == (3, tm.N_OUT)
        refused = [
            offload.TLS(root_certificates=str(pem["ca"])),  # no client certificate
            offload.TLS(root_certificates=str(pem["ca"]), certificate_chain=str(
                pem["stranger"]), private_key=str(pem["stranger"])),  # another CA's
            None,  # plain text
        ]
        for tls in refused:
            with offload.Client(secured.grpc_url, tls=tls, retries=1, timeout=10,
                                backoff=offload.Backoff(base=0.01)) as client, \
                    pytest.raises(offload.ServerUnavailableError):
                client.model("mlp")
