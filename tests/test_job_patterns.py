"""The client in the ways real jobs use it, against the real server: forked workers, pickled
clients shipped to spawned processes, a server that restarts under a living client, many
threads of one job on one client, and clients dropped without close()."""

from __future__ import annotations

import gc
import multiprocessing
import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tiny_models as tm
from helpers import free_port

import offload
from offload_server import LocalServer

N = tm.N_FEATURES
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("job-patterns-repo")
    tm.export_onnx_mlp(repo, "mlp", config_body=tm.mlp_config(
        "onnxruntime", "x", "y", max_batch_size=64,
        extra="dynamic_batching { max_queue_delay_microseconds: 500 }"))
    return repo


@pytest.fixture(scope="module")
def server(repo):
    with LocalServer(repo) as running:
        yield running


def _x(rows: int, value: float) -> np.ndarray:
    return np.full((rows, N), value, np.float32)


# ------------------------------------------------------------------ fork
# Module-level, so that fork children reach them (and spawn children import them).
_inherited: offload.Client | None = None


def _child_with_inherited_client(task: tuple[str, int]) -> list[float]:
    """A forked worker using the client its parent made: a call, a future, a split batch."""
    how, index = task
    assert _inherited is not None
    model = _inherited.model("mlp")
    x = _x(3 if how != "split" else 200, index / 10)
    if how == "infer":
        return model.infer(x=x)["y"][:, 0].tolist()
    if how == "submit":
        return model.submit(x=x).result(timeout=60)["y"][:, 0].tolist()
    return model.infer(x=x)["y"][:3, 0].tolist()  # 200 rows, max 64: 4 pieces


def _child_with_new_client(task: tuple[str, int]) -> list[float]:
    url, index = task
    with offload.Client(url, timeout=30) as client:
        return client.model("mlp").submit(x=_x(3, index / 10)).result(timeout=60)[
            "y"][:, 0].tolist()


@pytest.mark.slow
def test_a_fork_pool_uses_the_parents_client_and_new_ones_while_the_parent_is_busy(
        server, reference):
    global _inherited
    _inherited = offload.Client(server.grpc_url, timeout=30)
    model = _inherited.model("mlp")
    model.infer(x=_x(2, 0.5))
    model.submit(x=_x(2, 0.5)).result()  # the I/O loop runs: gRPC's asyncio is in use
    model.infer(x=_x(500, 0.5))  # a split batch too
    stop = threading.Event()

    def keep_busy() -> None:  # requests in flight while the pool forks
        while not stop.is_set():
            model.submit(x=_x(2, 0.25)).result()
            model.infer(x=_x(2, 0.25))

    busy = threading.Thread(target=keep_busy)
    busy.start()
    try:
        context = multiprocessing.get_context("fork")
        tasks = [(how, i) for i in range(4) for how in ("infer", "submit", "split")]
        for _ in range(2):  # twice: a second round of forks after the first
            with context.Pool(4) as pool:
                results = pool.map_async(_child_with_inherited_client, tasks).get(timeout=120)
                fresh = pool.map_async(_child_with_new_client,
                                       [(server.grpc_url, i) for i in range(8)]).get(timeout=120)
            for (_, index), got in zip(tasks, results, strict=True):
                np.testing.assert_allclose(got, reference(_x(3, index / 10))["y"][:, 0],
                                           rtol=1e-5, atol=1e-6)
            for index, got in enumerate(fresh):
                np.testing.assert_allclose(got, reference(_x(3, index / 10))["y"][:, 0],
                                           rtol=1e-5, atol=1e-6)
    finally:
        stop.set()
        busy.join(timeout=60)
    # The parent's client is untouched by its children.
    np.testing.assert_allclose(model.infer(x=_x(2, 0.5))["y"], reference(_x(2, 0.5))["y"],
                               rtol=1e-5, atol=1e-6)
    _inherited.close()


# ------------------------------------------------------------------ pickle
def _spawned_worker(blob: bytes) -> list[float]:
    model = pickle.loads(blob)  # a Model: its client comes with it, and reconnects here
    return model.infer(x=_x(2, 0.3))["y"][:, 0].tolist()


@pytest.mark.slow
def test_a_pickled_client_and_model_work_in_spawned_processes(server, reference):
    with offload.Client(server.grpc_url, timeout=30, retries=2, pipeline=4) as client:
        model = client.model("mlp")
        model.infer(x=_x(1, 0.1))
        blob = pickle.dumps(model)
        copy = pickle.loads(pickle.dumps(client))
        assert copy is not client
        assert copy.servers == client.servers
        assert (copy.timeout, copy.retries, copy.pipeline) == (30, 2, 4)
        np.testing.assert_allclose(copy.model("mlp").infer(x=_x(2, 0.3))["y"],
                                   reference(_x(2, 0.3))["y"], rtol=1e-5, atol=1e-6)
        copy.close()
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            results = pool.map(_spawned_worker, [blob] * 4, chunksize=1)
    for got in results:
        np.testing.assert_allclose(got, reference(_x(2, 0.3))["y"][:, 0], rtol=1e-5,
                                   atol=1e-6)


def test_a_closed_client_raises_an_offload_error(server):
    client = offload.Client(server.grpc_url)
    model = client.model("mlp")
    client.close()
    client.close()  # harmless
    assert client.closed
    for call in (lambda: model.infer(x=_x(1, 0.1)), lambda: model.submit(x=_x(1, 0.1)),
                 lambda: client.model("mlp2"), client.health):
        with pytest.raises(offload.ClientClosedError, match="closed"):
            call()


def _threads_and_descriptors() -> tuple[int, int]:
    return threading.active_count(), len(list(Path("/proc/self/fd").iterdir()))


def test_clients_dropped_without_close_free_their_threads_and_descriptors(server):
    def use_and_drop() -> None:
        client = offload.Client(server.grpc_url)
        model = client.model("mlp")
        model.submit(x=_x(1, 0.2)).result()  # starts the client's I/O thread
        model.infer(x=_x(1, 0.2))

    use_and_drop()  # gRPC's own process-wide threads start with the first client
    gc.collect()
    time.sleep(0.5)
    threads, descriptors = _threads_and_descriptors()
    for _ in range(100):
        use_and_drop()
    gc.collect()
    deadline = time.monotonic() + 20
    while _threads_and_descriptors()[0] > threads + 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    after_threads, after_descriptors = _threads_and_descriptors()
    assert after_threads <= threads + 2, (threads, after_threads)
    assert after_descriptors <= descriptors + 10, (descriptors, after_descriptors)


# ------------------------------------------------------------------ restarts
@pytest.mark.slow
def test_a_living_client_sees_its_server_back_within_seconds(repo, reference, record_property):
    """A 30 s outage (long enough for gRPC's default reconnect backoff to reach ~17 s):
    the client's first success comes within a few seconds of the server's return."""
    port = free_port()
    x = _x(2, 0.7)
    first = LocalServer(repo, grpc_port=port).start()
    client = offload.Client(first.grpc_url, timeout=2, retries=1,
                            backoff=offload.Backoff(base=0.05, cap=0.2))
    try:
        model = client.model("mlp")
        model.infer(x=x)
        first.kill()
        outage_end = time.monotonic() + 30
        while time.monotonic() < outage_end:  # the job keeps trying, and failing
            with pytest.raises((offload.ServerUnavailableError, offload.DeadlineExceededError)):
                model.infer(x=x)
            assert client.health(timeout=0.5) == {first.grpc_url: False}
            time.sleep(0.5)
        with LocalServer(repo, grpc_port=port):
            back = time.monotonic()
            assert client.health(timeout=5) == {first.grpc_url: True}  # a probe reconnects
            seen = time.monotonic() - back
            while True:
                try:
                    np.testing.assert_allclose(model.infer(x=x)["y"], reference(x)["y"],
                                               rtol=1e-5, atol=1e-6)
                    break
                except offload.OffloadError:
                    assert time.monotonic() - back < 10, "no success 10 s after the return"
                    time.sleep(0.1)
            first_success = time.monotonic() - back
        record_property("health_true_after_return_s", round(seen, 2))
        record_property("first_success_after_return_s", round(first_success, 2))
        assert first_success < 5, f"first success {first_success:.1f} s after the return"
    finally:
        client.close()
        first.stop()


# ------------------------------------------------------------------ crowds
@pytest.mark.slow
def test_64_threads_of_1000_jets_on_one_default_client_all_succeed(record_property):
    """One job, 64 threads, each asking for 1000 jets at once (32 requests of the tagger's
    max batch): the client's bound on requests in flight keeps the server's queue (256)
    from overflowing; every call succeeds within the default deadline."""
    with LocalServer(ROOT / "model_repository", models=["jet_tagger"]) as tagger_server, \
            offload.Client(tagger_server.grpc_url) as client:
        model = client.model("jet_tagger")
        rng = np.random.default_rng(7)
        jets = {t.name: rng.random((1000, *t.shape[1:]), dtype=np.float32)
                for t in model.inputs}
        expected = model.infer({k: v[:64] for k, v in jets.items()})["top_probability"]
        results: list[object] = []
        endpoint = client._engine.pool.endpoints[0]
        peak = 0

        def one_thread() -> None:
            try:
                results.append(model.infer(jets)["top_probability"])
            except offload.OffloadError as error:
                results.append(error)

        threads = [threading.Thread(target=one_thread) for _ in range(64)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            peak = max(peak, endpoint.slots.in_use)
            time.sleep(0.005)
        elapsed = time.monotonic() - started
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, {type(e).__name__: str(e)[:200] for e in errors}
    assert len(results) == 64
    for scores in results:
        np.testing.assert_allclose(scores[:64], expected, rtol=1e-5, atol=1e-6)
    assert peak <= 64  # the default max_in_flight
    assert model.stats().retries == 0  # nothing was refused by a full queue
    record_property("seconds", round(elapsed, 1))
