"""The embedded Triton server: launcher, CPU backends and model-repository checks.

Stands apart from the thin client (it may import it, never the reverse except through the
client's lazy, optional local fallback).
"""

from offload_server.local_server import LocalServer, ModelStatus, ServerTLS

__all__ = ["LocalServer", "ModelStatus", "ServerTLS"]
