"""Shared fixtures: a temporary model repository of tiny real models, served by one real
`tritonserver` for the whole session, and a plain `tritonclient.grpc` client for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import tiny_models as tm

from offload_server import LocalServer

# A long queue delay, so that concurrent requests surely meet in the dynamic batcher.
BATCHER = "dynamic_batching { max_queue_delay_microseconds: 200000 }"


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repository")
    for name, export, _, _ in tm.MLPS.values():
        export(repo, name, extra=BATCHER)
    for name, export in tm.DTYPE_MODELS.values():
        export(repo, name)
    tm.export_onnx_constituent_sum(repo)
    tm.export_torchscript_wrong_output_dtype(repo)
    tm.export_torchscript_refuses_negative(repo, extra=BATCHER)
    tm.export_onnx_mlp(repo, "mlp_onnx_two_instances", extra=f"""
instance_group [ {{ count: 2 kind: KIND_CPU }} ]
parameters {{ key: "intra_op_thread_count" value: {{ string_value: "1" }} }}
{BATCHER}""")
    return repo


@pytest.fixture(scope="session")
def in_process(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The MLPs run in this process, from the same seeds as those exported."""
    scratch = tmp_path_factory.mktemp("in-process")
    return {backend: export(scratch) for backend, (_, export, _, _) in tm.MLPS.items()}


@pytest.fixture(scope="session")
def server(repository: Path) -> Iterator[LocalServer]:
    with LocalServer(repository, startup_timeout=240) as running:
        yield running


@pytest.fixture(scope="session")
def triton(server: LocalServer):
    """A plain NVIDIA client, independent of the project's own code."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory):
    """The MLP `tm.export_onnx_mlp` exports (same seed), run in this process: what a server
    serving "mlp" must answer."""
    return tm.export_onnx_mlp(tmp_path_factory.mktemp("reference"), "mlp")
