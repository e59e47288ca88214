"""Faults with the real server: kill -9 and restart, a stalled server (SIGSTOP), a model
unloaded mid-run, a full queue with no retries left. Each run keeps a ledger: every
submitted inference gets exactly one result (checked against the model run in this process)
or one offload exception, in submission order, and the exceptions are the documented ones.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tiny_models as tm
from helpers import free_port

import offload
from offload_server import LocalServer

N = tm.N_FEATURES


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("faults-repo")
    tm.export_onnx_mlp(repo, "mlp", extra="dynamic_batching { max_queue_delay_microseconds: 500 }")
    return repo


def run_ledger(model: offload.Model, n_requests: int, *, in_flight: int = 8,
               events: dict[int, Callable[[], None]] | None = None, reference=None,
               timeout: float | None = None) -> list[tuple[int, BaseException | None]]:
    """Submit n_requests (at most in_flight at once), running events[i] just before request
    i; return (index, exception or None) for every request, in order. Results are checked
    against `reference` where one is given."""
    events = events or {}
    slots = threading.BoundedSemaphore(in_flight)
    ledger = []
    for index in range(n_requests):
        if index in events:
            events[index]()
        x = np.full((1 + index % 3, N), (index % 97) / 97, np.float32)
        slots.acquire()
        future = model.submit(x=x, timeout=timeout)
        future.add_done_callback(lambda _: slots.release())
        ledger.append((index, x, future))
    outcomes = []
    for index, x, future in ledger:
        error = future.exception(timeout=120)  # every entry finishes: none is dropped
        if error is None and reference is not None:
            np.testing.assert_allclose(future.result()["y"], reference(x)["y"], rtol=1e-5,
                                       atol=1e-5, err_msg=f"request {index}")
        outcomes.append((index, error))
    assert [index for index, _ in outcomes] == list(range(n_requests))
    return outcomes


@pytest.mark.slow
def test_kill_9_and_restart_on_the_same_port_loses_nothing(repo, reference):
    port = free_port()
    first = LocalServer(repo, grpc_port=port).start()
    replacement: list[LocalServer] = []

    def crash_and_restart() -> None:
        first.kill()  # no goodbye: a crashed node
        first.stop()  # reaps it; nothing left to stop
        threading.Thread(target=lambda: replacement.append(
            LocalServer(repo, grpc_port=port).start()), daemon=True).start()

    try:
        with offload.Client(f"127.0.0.1:{port}", retries=40, timeout=45,
                            backoff=offload.Backoff(base=0.05, cap=0.5)) as client:
            model = client.model("mlp")
            outcomes = run_ledger(model, 300, events={100: crash_and_restart},
                                  reference=reference)
            stats = model.stats()
    finally:
        first.stop()
        for server in replacement:
            server.stop()
    assert replacement, "the replacement server never started"
    failed = [(index, error) for index, error in outcomes if error is not None]
    assert failed == [], f"{len(failed)} requests lost across the restart: {failed[:3]}"
    assert stats.retries > 0, "no request met the dead server: the test proved nothing"
    assert stats.calls == 300
    assert stats.failures == 0


@pytest.mark.slow
def test_stalled_server_gives_deadlines_then_recovers(repo, reference):
    with LocalServer(repo) as server, offload.Client(server.grpc_url, timeout=30) as client:
        model = client.model("mlp")
        os.killpg(server.pid, signal.SIGSTOP)  # alive, connected, silent
        try:
            started = time.monotonic()
            outcomes = run_ledger(model, 12, in_flight=4, timeout=1.0)
            elapsed = time.monotonic() - started
        finally:
            os.killpg(server.pid, signal.SIGCONT)
        kinds = {type(error) for _, error in outcomes}
        assert kinds == {offload.DeadlineExceededError}, kinds
        assert all("model 'mlp'" in str(error) for _, error in outcomes)
        assert elapsed < 12, f"12 calls of 1 s deadline, 4 at a time, took {elapsed:.1f} s"
        x = np.ones((2, N), np.float32)  # woken up: served again
        np.testing.assert_allclose(model.infer(x=x)["y"], reference(x)["y"], rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.slow
def test_stalled_server_among_two_is_avoided(repo, reference):
    with LocalServer(repo) as stalled, LocalServer(repo) as healthy, \
            offload.Client([stalled.grpc_url, healthy.grpc_url], retries=4) as client:
        model = client.model("mlp")
        os.killpg(stalled.pid, signal.SIGSTOP)
        try:
            outcomes = run_ledger(model, 120, in_flight=4, timeout=1.5, reference=reference)
        finally:
            os.killpg(stalled.pid, signal.SIGCONT)
    errors = [(index, error) for index, error in outcomes if error is not None]
    assert all(isinstance(e, offload.DeadlineExceededError) for _, e in errors), errors
    # Only requests sent before the stalled server's breaker opened can be caught there:
    # a few, at the start; everything later goes to the healthy one.
    assert len(errors) <= 8, f"{len(errors)} deadlines: the stalled server was not avoided"
    assert all(index < 40 for index, _ in errors), errors


@pytest.mark.slow
def test_model_unloaded_mid_run_waits_within_the_deadline_and_nothing_is_lost(repo,
                                                                             reference):
    """A model without a version serving (a drain, a reload) is transient: requests wait
    within their deadline and are served once it is back; none is lost."""
    import tritonclient.grpc as grpcclient

    with LocalServer(repo, models=["mlp"]) as server, \
            offload.Client(server.grpc_url, retries=2, timeout=60) as client:
        admin = grpcclient.InferenceServerClient(server.grpc_url)
        token = {"authorization": f"Bearer {server.token}"}  # the repository API needs it
        model = client.model("mlp")

        def unload_and_reload_later() -> None:
            admin.unload_model("mlp", headers=token)
            threading.Timer(2.0, lambda: admin.load_model("mlp", headers=token)).start()

        outcomes = run_ledger(model, 150, in_flight=4, reference=reference,
                              events={60: unload_and_reload_later})
        assert [e for _, e in outcomes if e is not None] == []
        assert model.stats().retries > 0  # some did wait for the reload
        admin.close()


def test_model_gone_for_the_whole_deadline_is_model_not_found(repo):
    import tritonclient.grpc as grpcclient

    with LocalServer(repo, models=["mlp"]) as server, \
            offload.Client(server.grpc_url, retries=2) as client:
        model = client.model("mlp")
        admin = grpcclient.InferenceServerClient(server.grpc_url)
        admin.unload_model("mlp", headers={"authorization": f"Bearer {server.token}"})
        admin.close()
        started = time.monotonic()
        with pytest.raises(offload.ModelNotFoundError,
                           match=r"model 'mlp' had no version serving until the deadline.*"
                                 r"has no available versions"):
            model.infer(x=np.ones((1, N), np.float32), timeout=2.0)
        assert 1.9 < time.monotonic() - started < 10


def test_full_queue_without_retries_left_is_an_overload_error_for_each_refused(tmp_path):
    tm.export_echo(tmp_path, "queue_of_two", "TYPE_FP32", max_batch_size=4, dims=(4,),
                   sleep_s=0.2,
                   extra="dynamic_batching { default_queue_policy { max_queue_size: 2 } }")
    with LocalServer(tmp_path) as server, \
            offload.Client(server.grpc_url, retries=0, timeout=30) as client:
        model = client.model("queue_of_two")
        futures = [model.submit(INPUT0=np.full((1, 4), i, np.float32)) for i in range(12)]
        outcomes = [(i, f.exception(timeout=60)) for i, f in enumerate(futures)]
        served = [i for i, e in outcomes if e is None]
        refused = [e for _, e in outcomes if e is not None]
        assert served, outcomes  # some got through, some met a full queue
        assert refused, outcomes
        assert all(isinstance(e, offload.ServerOverloadedError) for e in refused), refused
        assert "queue is full" in str(refused[0])
        for i in served:  # and those served got their own inputs back
            np.testing.assert_array_equal(futures[i].result()["OUTPUT0"],
                                          np.full((1, 4), i, np.float32))
        assert server.ready()  # overload refused requests; the server is fine


def test_queue_timeout_is_an_overload_and_is_retried(tmp_path):
    """A request that waited longer than the queue policy allows never ran: it is refused
    as an overload (not a dead server) and retried; with no retries left, the caller gets
    ServerOverloadedError."""
    tm.export_echo(tmp_path, "slow_queue", "TYPE_FP32", max_batch_size=1, dims=(4,),
                   sleep_s=0.3, extra="""dynamic_batching { default_queue_policy {
        max_queue_size: 16 timeout_action: REJECT default_timeout_microseconds: 200000 } }""")
    with LocalServer(tmp_path) as server:
        with offload.Client(server.grpc_url, retries=0) as client:
            model = client.model("slow_queue")
            futures = [model.submit(INPUT0=np.full((1, 4), i, np.float32)) for i in range(5)]
            errors = [f.exception(timeout=30) for f in futures]
            refused = [e for e in errors if e is not None]
            assert refused, errors
            assert all(isinstance(e, offload.ServerOverloadedError) for e in refused), errors
            assert "Request timeout expired" in str(refused[0])
        with offload.Client(server.grpc_url, retries=30,
                            backoff=offload.Backoff(base=0.1, cap=0.5)) as patient:
            model = patient.model("slow_queue")
            futures = [model.submit(INPUT0=np.full((1, 4), i, np.float32)) for i in range(5)]
            for i, future in enumerate(futures):  # all served, each its own, in the end
                np.testing.assert_array_equal(future.result(timeout=60)["OUTPUT0"],
                                              np.full((1, 4), i, np.float32))
            assert model.stats().retries > 0


def test_the_embedded_servers_front_bounds_the_requests_in_flight(tmp_path):
    """The repository's CPU configs set no queue policy (it stalls Triton 2.51's batcher);
    the front bounds the queue instead: calls beyond --max-in-flight are refused as a full
    queue, retried by the client, and every one is served in the end."""
    tm.export_echo(tmp_path, "slow", "TYPE_FP32", max_batch_size=1, dims=(4,), sleep_s=0.2)
    with LocalServer(tmp_path, max_in_flight=2) as server:
        with offload.Client(server.grpc_url, retries=0) as client:
            model = client.model("slow")
            futures = [model.submit(INPUT0=np.full((1, 4), i, np.float32)) for i in range(6)]
            errors = [f.exception(timeout=30) for f in futures]
            refused = [e for e in errors if e is not None]
            assert refused, errors
            assert all(isinstance(e, offload.ServerOverloadedError) for e in refused), errors
            assert "2 inference requests are in flight on this server" in str(refused[0])
            assert sum(e is None for e in errors) >= 2
        with offload.Client(server.grpc_url, retries=30,
                            backoff=offload.Backoff(base=0.1, cap=0.4)) as patient:
            model = patient.model("slow")
            futures = [model.submit(INPUT0=np.full((1, 4), i, np.float32)) for i in range(6)]
            for i, future in enumerate(futures):
                np.testing.assert_array_equal(future.result(timeout=60)["OUTPUT0"],
                                              np.full((1, 4), i, np.float32))
            assert model.stats().retries > 0


def test_the_repository_cpu_configs_set_no_queue_policy_and_the_gpu_ones_do():
    from offload_server.model_spec import read_config

    repository = Path(__file__).resolve().parent.parent / "model_repository"
    for folder in sorted(p for p in repository.iterdir() if (p / "config.pbtxt").is_file()):
        assert not read_config(folder).dynamic_batching.HasField("default_queue_policy"), \
            folder.name
        policy = read_config(folder, "gpu").dynamic_batching.default_queue_policy
        assert policy.max_queue_size > 0, folder.name
        assert policy.default_timeout_microseconds > 0, folder.name
