"""Starting and stopping the embedded server: `LocalServer` and `offload serve`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tiny_models as tm
import tritonclient.grpc as grpcclient
from helpers import FREE_PORTS, OFFLOAD, ROOT, ServeProcess, group_alive, stop_group
from tritonclient.utils import InferenceServerException

from offload_server import LocalServer
from offload_server.errors import PortInUseError


@pytest.fixture(scope="module")
def small_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("small-repo")
    tm.export_onnx_mlp(repo, "mlp_a")
    tm.export_onnx_mlp(repo, "mlp_b")
    return repo


def test_start_and_stop_leave_nothing_behind(small_repo):
    server = LocalServer(small_repo)
    with server:
        assert server.ready()
        pid, workdir = server.pid, server.log_file.parent
        assert {m.name: m.state for m in server.models()} == {"mlp_a": "READY", "mlp_b": "READY"}
        assert group_alive(pid)
    assert not group_alive(pid)
    assert not workdir.exists()
    server.stop()  # a second stop is harmless


_OWNER = """
import sys, time
from offload_server import LocalServer
server = LocalServer(sys.argv[1]).start()
print(server.pid, server.front_pid, flush=True)
time.sleep(600)
"""


def test_a_killed_owner_leaves_no_server_behind(small_repo):
    """A job that dies without stopping its server (kill -9) takes the server with it."""
    with subprocess.Popen([sys.executable, "-c", _OWNER, str(small_repo)],
                          stdout=subprocess.PIPE, text=True) as owner:
        try:
            triton_pid, front_pid = map(int, owner.stdout.readline().split())
            assert group_alive(triton_pid)
            owner.kill()
            owner.wait()
            deadline = time.monotonic() + 30
            while (group_alive(triton_pid) or _alive(front_pid)) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not group_alive(triton_pid)
            assert not _alive(front_pid)
        finally:
            if owner.poll() is None:
                owner.kill()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_explicit_mode_loads_only_the_requested_models(small_repo):
    with LocalServer(small_repo, models=["mlp_b"]) as server:
        states = {m.name: m.state for m in server.models()}
    assert states["mlp_b"] == "READY"
    assert states.get("mlp_a") != "READY"


def test_port_in_use_is_refused_before_starting(small_repo):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = LocalServer(small_repo, grpc_port=port)
        expected = rf"grpc port {port} .* already in use.*--grpc-port"
        with pytest.raises(PortInUseError, match=expected):
            server.start()
        assert server.pid is None


def test_missing_repository_is_a_clear_error(tmp_path):
    from offload_server.errors import ModelRepositoryError

    with pytest.raises(ModelRepositoryError, match="does not exist"):
        LocalServer(tmp_path / "nowhere").start()


def test_missing_nvidia_pytriton_says_how_to_install(tmp_path):
    # -S: no site-packages, so nvidia-pytriton is absent; the project's own sources only.
    code = ("import sys; sys.path[:0] = ['client', 'server']\n"
            "from offload_server import LocalServer\n"
            f"LocalServer({str(tmp_path)!r}).start()\n")
    result = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "TritonNotInstalledError: nvidia-pytriton is not installed" in result.stderr
    assert "pip install 'offload[server]'" in result.stderr


def test_import_offload_stays_thin():
    code = ("import sys, offload, offload.cli, offload.physics.jets, offload.physics.pfnano\n"
            "import offload.dask\n"
            "heavy = {'torch', 'tensorflow', 'onnxruntime', 'offload_server', 'pytriton', 'rich',\n"
            "         'kubernetes', 'offload_deploy', 'yaml', 'awkward', 'uproot', 'dask',\n"
            "         'distributed', 'dask_awkward', 'tqdm'}\n"
            "print(sorted(heavy & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_server_errors_live_with_the_server():
    """Errors only the server side raises are offload_server's, still OffloadErrors; the
    thin client does not carry them."""
    import offload
    import offload.errors
    from offload_server import errors

    for name in ("ServerError", "TritonNotInstalledError", "PortInUseError",
                 "ServerStartError", "ModelRepositoryError"):
        assert issubclass(getattr(errors, name), offload.OffloadError), name
        assert not hasattr(offload, name), name
        assert not hasattr(offload.errors, name), name
    assert issubclass(errors.ServerStartError, errors.ServerError)
    assert errors.ModelRepositoryError("bad", ["a", "b"]).problems == ["a", "b"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_offload_serve_is_ready_for_plain_tritonclient_and_stops_on_signal(small_repo, signum):
    serve = ServeProcess("--model-repository", str(small_repo), *FREE_PORTS)
    triton_pid = None
    try:
        triton_pid = int(serve.wait_for(r"tritonserver ready \(pid (\d+)").group(1))
        grpc_url = serve.wait_for(r"gRPC\s+(\S+)").group(1)
        token_file = Path(serve.wait_for(r"token\s+(\S+)  \(generated").group(1))
        assert token_file.stat().st_mode & 0o077 == 0  # this user's alone
        serve.wait_for(r"mlp_b .*READY")
        client = grpcclient.InferenceServerClient(grpc_url)
        assert client.is_server_ready()
        with pytest.raises(InferenceServerException, match="needs its token"):
            client.get_model_repository_index()  # it may load models: not without the token
        index = client.get_model_repository_index(
            as_json=True, headers={"authorization": f"Bearer {token_file.read_text().strip()}"}
        )["models"]
        assert {(m["name"], m["state"]) for m in index} == {("mlp_a", "READY"), ("mlp_b", "READY")}
        client.close()
        started = time.monotonic()
        serve.process.send_signal(signum)
        assert serve.process.wait(timeout=30) == 0, serve.output()
        assert time.monotonic() - started < 20
        assert not group_alive(triton_pid)
        assert "stopped." in serve.output()
    finally:
        if serve.process.poll() is None:
            serve.process.kill()
        if triton_pid:
            stop_group(triton_pid)


def test_make_serve_starts_the_server_and_ctrl_c_stops_it(small_repo):
    serve = ServeProcess(command=["make", "--no-print-directory", "serve", f"REPO={small_repo}",
                                  f"SERVE_ARGS={' '.join(FREE_PORTS)}"])
    triton_pid = None
    try:
        triton_pid = int(serve.wait_for(r"tritonserver ready \(pid (\d+)").group(1))
        grpc_url = serve.wait_for(r"gRPC\s+(\S+)").group(1)
        client = grpcclient.InferenceServerClient(grpc_url)
        assert client.is_server_ready()
        assert client.is_model_ready("mlp_a")
        assert client.is_model_ready("mlp_b")
        client.close()
        os.killpg(serve.process.pid, signal.SIGINT)  # Ctrl-C reaches the foreground group
        serve.process.wait(timeout=30)
        serve.wait_for("stopped.", timeout=10)
        assert not group_alive(triton_pid)
    finally:
        if serve.process.poll() is None:
            os.killpg(serve.process.pid, signal.SIGKILL)
        if triton_pid:
            stop_group(triton_pid)


def test_offload_serve_with_broken_model_exits_nonzero_with_tritons_errors(tmp_path):
    tm.export_onnx_mlp(tmp_path, "broken", config_features=tm.N_FEATURES + 1)
    serve = ServeProcess("--model-repository", str(tmp_path), *FREE_PORTS)
    assert serve.process.wait(timeout=120) == 1
    output = serve.output()
    assert "failed to load 'broken' version 1" in output
    assert "input 'x': config.pbtxt implies shape" in output


def test_offload_serve_with_taken_port_exits_nonzero(small_repo):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        serve = ServeProcess("--model-repository", str(small_repo), "--grpc-port", "0",
                             "--http-port", str(port), "--metrics-port", "0")
        assert serve.process.wait(timeout=60) == 1
    assert f"http port {port} on 127.0.0.1 is already in use" in serve.output()


def test_offload_repo_check_cli_exit_codes(small_repo, tmp_path):
    good = subprocess.run([*OFFLOAD, "repo", "check", str(small_repo)], capture_output=True,
                          text=True, timeout=120)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "mlp_a (onnxruntime, versions 1): ok" in good.stdout
    tm.export_onnx_mlp(tmp_path, "broken", config_features=3)
    bad = subprocess.run([*OFFLOAD, "repo", "check", str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 1
    assert "ERROR model 'broken': input 'x'" in bad.stdout
    assert (tmp_path / "broken" / "1" / "model.onnx").exists()


def test_poll_mode_with_passed_through_triton_flag_loads_a_model_added_later(tmp_path):
    repo, staging = tmp_path / "repo", tmp_path / "staging"
    tm.export_onnx_mlp(repo, "first")
    serve = ServeProcess("--model-repository", str(repo), *FREE_PORTS,
                         "--model-control-mode", "poll", "--", "--repository-poll-secs=1")
    triton_pid = None
    try:
        triton_pid = int(serve.wait_for(r"tritonserver ready \(pid (\d+)").group(1))
        client = grpcclient.InferenceServerClient(serve.wait_for(r"gRPC\s+(\S+)").group(1))
        assert client.is_model_ready("first")
        tm.export_onnx_mlp(staging, "second")
        (staging / "second").rename(repo / "second")  # appears, whole, while the server runs
        deadline = time.monotonic() + 60
        while not client.is_model_ready("second") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert client.is_model_ready("second")
        client.close()
        serve.process.send_signal(signal.SIGINT)
        assert serve.process.wait(timeout=30) == 0
    finally:
        if serve.process.poll() is None:
            serve.process.kill()
        if triton_pid:
            stop_group(triton_pid)
