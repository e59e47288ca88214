"""The client against a server of the Open Inference Protocol that is not Triton: KServe's
own gRPC servicer (package `kserve`, from the package index), on 127.0.0.1. It has no
ModelConfig RPC, no repository index and no shared memory, and answers in the typed
`contents` fields rather than raw bytes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import offload

SERVER = Path(__file__).parent / "servers" / "kserve_affine.py"


@pytest.fixture(scope="module")
def kserve_url() -> Iterator[str]:
    # Not imported here: kserve registers its own copy of the protocol's protobuf types,
    # which would clash with tritonclient's in this process. (A dev dependency: if it is
    # missing, the suite's setup is broken, and this says so.)
    assert importlib.util.find_spec("kserve"), "kserve is not installed: pip install -e '.[dev]'"
    with subprocess.Popen([sys.executable, str(SERVER)], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True) as process:
        try:
            assert process.stdout is not None
            port = process.stdout.readline().strip()
            assert port.isdigit(), f"the KServe server did not start ({port!r})"
            yield f"127.0.0.1:{port}"
        finally:
            process.kill()


def test_metadata_only_model_and_typed_contents(kserve_url):
    with offload.Client(kserve_url, timeout=20) as client:
        assert client.health() == {kserve_url: True}
        affine = client.model("affine")  # no ModelConfig: taken from ModelMetadata alone
        assert affine.max_batch_size == 0  # unknown: calls are not split
        assert [t.describe() for t in affine.inputs] == ["'x' FP32 [-1, 4]"]
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        np.testing.assert_array_equal(affine.infer(x=x)["y"], 2 * x + 1)
        np.testing.assert_array_equal(affine.submit(x=x).result()["y"], 2 * x + 1)
        tagged = client.model("tagged")
        out = tagged.infer(x=np.array([[0.25, 0.5], [1.0, 2.0]], np.float32))
        assert out["total"].dtype == np.float64
        np.testing.assert_allclose(out["total"], [0.75, 3.0])
        assert list(out["label"]) == [b"small", b"big"]


def test_a_batch_size_given_by_the_caller_splits_calls(kserve_url):
    with offload.Client(kserve_url, timeout=20) as client:
        affine = client.model("affine", max_batch_size=2)
        x = np.arange(20, dtype=np.float32).reshape(5, 4)
        np.testing.assert_array_equal(affine.infer(x=x)["y"], 2 * x + 1)
        assert affine.stats().requests == 3  # 2 + 2 + 1 rows


async def _async_round_trip(url: str) -> np.ndarray:
    async with offload.AsyncClient(url, timeout=20) as client:
        affine = await client.model("affine")
        return (await affine.infer(x=np.ones((2, 4), np.float32)))["y"]


def test_async_client_too(kserve_url):
    import asyncio

    np.testing.assert_array_equal(asyncio.run(_async_round_trip(kserve_url)), 3)


def test_what_such_a_server_lacks_is_a_clear_error(kserve_url):
    with offload.Client(kserve_url, timeout=20, retries=0) as client:
        with pytest.raises(offload.ModelNotFoundError, match="model 'nope'"):
            client.model("nope")
        with pytest.raises(offload.NotSupportedError, match="does not implement"):
            client.models()  # no repository index
    with offload.Client(kserve_url, timeout=20, shared_memory=True) as client:
        affine = client.model("affine")
        with pytest.raises(offload.SharedMemoryError, match="does not implement"):
            affine.infer(x=np.ones((1, 4), np.float32))
