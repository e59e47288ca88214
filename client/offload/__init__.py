"""offload: send batched inference from grid and trigger jobs to Triton servers.

    import offload
    client = offload.Client("triton.example.org:8001")
    outputs = client.model("jet_tagger").infer(points=p, features=f, mask=m)

The base install is the thin client (grpcio, protobuf, numpy and Triton's protobuf stubs).
`import offload` itself imports none of them but numpy-free error classes; the client's
modules load on first use of `Client`, `AsyncClient` or `Batcher`.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version
from typing import TYPE_CHECKING, Any

from offload.errors import (
    AuthenticationError,
    ClientClosedError,
    DeadlineExceededError,
    InferenceError,
    InvalidInputError,
    MessageTooLargeError,
    ModelNotFoundError,
    NotSupportedError,
    OffloadError,
    ProtocolError,
    ServerInferenceError,
    ServerOverloadedError,
    ServerUnavailableError,
    SharedMemoryError,
)

if TYPE_CHECKING:
    from offload.aio import AsyncClient, AsyncModel
    from offload.batching import Batcher
    from offload.client import Client, Model
    from offload.endpoints import TLS, Backoff

try:  # one source: the distribution's metadata (pyproject.toml's version)
    __version__ = _version("offload")
except PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"

_LAZY = {
    "Client": "offload.client", "Model": "offload.client",
    "AsyncClient": "offload.aio", "AsyncModel": "offload.aio",
    "Batcher": "offload.batching",
    "TLS": "offload.endpoints", "Backoff": "offload.endpoints",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'offload' has no attribute {name!r}")


__all__ = [
    "TLS",
    "AsyncClient",
    "AsyncModel",
    "AuthenticationError",
    "Backoff",
    "Batcher",
    "Client",
    "ClientClosedError",
    "DeadlineExceededError",
    "InferenceError",
    "InvalidInputError",
    "MessageTooLargeError",
    "Model",
    "ModelNotFoundError",
    "NotSupportedError",
    "OffloadError",
    "ProtocolError",
    "ServerInferenceError",
    "ServerOverloadedError",
    "ServerUnavailableError",
    "SharedMemoryError",
    "__version__",
]
