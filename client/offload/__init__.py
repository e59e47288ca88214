"""offload: send batched inference from grid and trigger jobs to Triton servers.

The base install is the thin client; it imports grpcio, protobuf and numpy only.
"""

from offload.errors import (
    ModelRepositoryError,
    OffloadError,
    PortInUseError,
    ServerError,
    ServerStartError,
    TritonNotInstalledError,
)

__version__ = "0.1.0"

__all__ = [
    "ModelRepositoryError",
    "OffloadError",
    "PortInUseError",
    "ServerError",
    "ServerStartError",
    "TritonNotInstalledError",
    "__version__",
]
