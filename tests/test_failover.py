"""Two real servers, one killed in the middle of a run: every submitted inference gets
exactly one result or one exception, in order, and a ledger proves it. And the thin client
installed alone, in an environment of its own."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tiny_models as tm

import offload
from offload_server import LocalServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("failover-repo")
    tm.export_onnx_mlp(repo, "mlp", extra="dynamic_batching { max_queue_delay_microseconds: 500 }")
    return repo


@pytest.mark.slow
def test_failover_when_one_of_two_servers_is_killed_mid_run(repo, reference):
    n_requests, kill_after, in_flight = 400, 120, 16
    with LocalServer(repo) as first, LocalServer(repo) as second, \
            offload.Client([first.grpc_url, second.grpc_url], retries=8, timeout=60,
                           backoff=offload.Backoff(base=0.01, cap=0.2)) as client:
        model = client.model("mlp")
        slots = threading.BoundedSemaphore(in_flight)
        ledger: list[tuple[int, np.ndarray, object]] = []  # (index, input, future)
        for index in range(n_requests):
            if index == kill_after:
                first.kill()  # no goodbye: a crashed node
            x = np.full((1 + index % 4, tm.N_FEATURES), index / n_requests, np.float32)
            slots.acquire()
            future = model.submit(x=x)
            future.add_done_callback(lambda _: slots.release())
            ledger.append((index, x, future))
        outcomes = []
        for index, x, future in ledger:
            error = future.exception(timeout=60)  # every entry finishes: none is dropped
            if error is None:
                np.testing.assert_allclose(future.result()["y"], reference(x)["y"],
                                           rtol=1e-5, atol=1e-5, err_msg=f"request {index}")
            outcomes.append((index, "error" if error else "result"))
        stats = model.stats()
    assert [index for index, _ in outcomes] == list(range(n_requests))  # in order, all there
    failed = [index for index, kind in outcomes if kind == "error"]
    assert failed == [], f"requests {failed} failed although a server stayed up"
    assert stats.retries > 0, "no request met the killed server: the test proved nothing"
    assert stats.calls == n_requests
    assert stats.failures == 0


@pytest.mark.slow
def test_thin_client_alone_in_a_fresh_environment(repo, tmp_path):
    environment = tmp_path / "thin"
    subprocess.run([sys.executable, "-m", "venv", str(environment)], check=True, timeout=120)
    python = environment / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                              "--disable-pip-version-check", str(ROOT)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    with LocalServer(repo, models=["mlp"]) as server:
        code = f"""
import sys
import numpy as np
import offload
client = offload.Client({server.grpc_url!r})
y = client.model("mlp").infer(x=np.ones((2, {tm.N_FEATURES}), np.float32))["y"]
heavy = sorted({{"torch", "tensorflow", "onnxruntime", "offload_server"}} & set(sys.modules))
print(y.shape, heavy)
"""
        result = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                                timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"(2, {tm.N_OUT}) []"
    missing = subprocess.run([str(python), "-c", "import torch"], capture_output=True)
    assert missing.returncode != 0  # really only the base install
