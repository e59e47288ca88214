"""Overlapping requests do not stall (issue 15, item 3).

Triton 2.51's dynamic batcher, when the model's queue has a policy, cannot prefetch: it
waits for an idle instance. Its only wake-up comes from the running batch's completion,
just *before* that instance is idle again; when the batcher looks too early it sleeps its
default 500 ms. With one instance a request that cannot join the running batch (256 + 44
rows > max_batch_size 256) then waited ~500 ms for ~12 ms of compute. The repository's CPU
configs now set no policy (the batcher prefetches), and keep two instances; the GPU
variants keep a policy with two instances (README, "CPU backends"; perf/RESULTS.md).

The guard does not time anything on the client: it reads Triton's own statistics per trial
(execution count: the two requests ran as two batches, the case that stalled; queue time:
a stall is at least 500 ms of it, a trial without one has next to none, however slow the
machine). With one instance about one trial in five stalled here, so 25 clean trials in a
row are what the broken configuration gives with probability ~0.5 %.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from offload_server.model_spec import read_config

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "model_repository"
MODEL = "calo_shower_generator"
TRIALS = 25
STALL_NS = 400e6  # the batcher's sleep is 500 ms; nothing else queues an idle server's work


def config_files() -> list[Path]:
    """Every config of every repository model: config.pbtxt and each configs/*.pbtxt."""
    files = []
    for folder in sorted(p for p in REPOSITORY.iterdir() if (p / "config.pbtxt").is_file()):
        files.append(folder / "config.pbtxt")
        files += sorted((folder / "configs").glob("*.pbtxt"))
    return files


@pytest.mark.parametrize("path", config_files(), ids=lambda p: f"{p.parent.name}/{p.name}"
                         if p.parent.name != "configs" else f"{p.parents[1].name}/{p.name}")
def test_every_config_with_a_queue_policy_has_two_instances(path):
    folder = path.parent if path.name == "config.pbtxt" else path.parents[1]
    variant = None if path.name == "config.pbtxt" else path.stem
    config = read_config(folder, variant)
    if not config.dynamic_batching.HasField("default_queue_policy"):
        return  # the batcher prefetches: no stall with any number of instances
    instances = sum(group.count or 1 for group in config.instance_group) or 1
    assert instances >= 2, f"{path}: {instances} instance(s) with a queue policy"


def _inputs(rows: int, rng: np.random.Generator) -> list:
    import tritonclient.grpc as grpcclient

    arrays = {"energy": rng.uniform(1, 100, (rows, 1)).astype(np.float32),
              "latent": rng.standard_normal((rows, 8), np.float32),
              "uniform": rng.random((rows, 576), np.float32)}
    tensors = []
    for name, value in arrays.items():
        tensor = grpcclient.InferInput(name, list(value.shape), "FP32")
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    return tensors


def _counters(triton) -> tuple[int, int, int]:
    """(successful requests, executions, queue ns) of the model, cumulative."""
    stats = triton.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    inference = stats["inference_stats"]
    return (int(inference["success"].get("count", 0)), int(stats.get("execution_count", 0)),
            int(inference["queue"].get("ns", 0)))


def test_overlapping_requests_of_the_shower_generator_do_not_stall():
    """The reported case, as reported: NVIDIA's tritonclient, 256 + 44 rows at once."""
    import tritonclient.grpc as grpcclient

    from offload_server import LocalServer

    rng = np.random.default_rng(15)
    requests = [_inputs(256, rng), _inputs(44, rng)]
    with LocalServer(REPOSITORY, models=[MODEL]) as server:
        triton = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            for request in requests:  # warm-up, one shape at a time
                triton.infer(MODEL, request)
            trials = []
            for _ in range(TRIALS):
                before = _counters(triton)
                errors: list = []
                done = threading.Semaphore(0)

                # tritonclient passes result= and error= by keyword: the names are its own.
                def answered(result, error, errors=errors, done=done) -> None:  # noqa: ARG001
                    errors.append(error)
                    done.release()

                for request in requests:
                    triton.async_infer(MODEL, request, answered)
                for _ in requests:
                    assert done.acquire(timeout=60), "no answer within 60 s"
                assert errors == [None, None], errors
                after = _counters(triton)
                deadline = time.monotonic() + 5  # statistics land just after the response
                while after[0] - before[0] < len(requests) and time.monotonic() < deadline:
                    time.sleep(0.01)
                    after = _counters(triton)
                trials.append(tuple(a - b for a, b in zip(after, before, strict=True)))
        finally:
            triton.close()
    assert all(t[0] == 2 for t in trials), trials
    # Two batches each time: the requests did not merge (together they exceed 256), which is
    # the case that stalled; had they merged, this test would prove nothing.
    assert all(t[1] == 2 for t in trials), trials
    stalled = [round(t[2] / 1e6) for t in trials if t[2] > STALL_NS]
    assert not stalled, f"{len(stalled)} of {TRIALS} trials queued {stalled} ms"
