"""Who may call what: the APIs of Triton's protocol by category, and the credential check.

The categories are Triton's own (those of ``--grpc-restricted-protocol``). Without a user
token, the APIs that change what the server runs or show other clients' state (model
repository, shared memory, trace, logging) need the server's generated secret; with a
user token, everything but health needs that token.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from offload.tokens import TOKEN_HEADER, TOKEN_KEY

_SERVICE = "/inference.GRPCInferenceService/"

#: gRPC method path -> category.
GRPC_CATEGORIES: dict[str, str] = {
    "/grpc.health.v1.Health/Check": "health",
    "/grpc.health.v1.Health/Watch": "health",
    **{_SERVICE + m: "health" for m in ("ServerLive", "ServerReady", "ModelReady")},
    **{_SERVICE + m: "metadata" for m in ("ServerMetadata", "ModelMetadata")},
    **{_SERVICE + m: "inference" for m in ("ModelInfer", "ModelStreamInfer")},
    _SERVICE + "ModelConfig": "model-config",
    _SERVICE + "ModelStatistics": "statistics",
    **{_SERVICE + m: "model-repository"
       for m in ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")},
    **{_SERVICE + f"{kind}SharedMemory{op}": "shared-memory"
       for kind in ("System", "Cuda") for op in ("Status", "Register", "Unregister")},
    _SERVICE + "TraceSetting": "trace",
    _SERVICE + "LogSettings": "logging",
}

CATEGORIES = ("health", "metadata", "inference", "model-config", "statistics",
              "model-repository", "shared-memory", "trace", "logging")
#: Served without any credential when the user set no token.
OPEN_WITHOUT_TOKEN = frozenset({"health", "metadata", "inference", "model-config",
                                "statistics"})
#: Served without any credential when the user set a token: probes must work without it.
OPEN_WITH_TOKEN = frozenset({"health"})


@dataclass(frozen=True)
class Refusal:
    """Why a call is refused: a gRPC status code and a message for the caller."""

    code: int  # grpc status code number
    message: str


UNAUTHENTICATED = 16
PERMISSION_DENIED = 7
UNIMPLEMENTED = 12


@dataclass(frozen=True)
class AccessPolicy:
    """The credential of one server and the categories served without it."""

    token: str
    user_token: bool  # the user's token (else one generated for this server)

    @property
    def open_categories(self) -> frozenset[str]:
        return OPEN_WITH_TOKEN if self.user_token else OPEN_WITHOUT_TOKEN

    def check_grpc(self, path: str, headers: Iterable[tuple[str, str]]) -> Refusal | None:
        """None if the call may pass, else why not."""
        category = GRPC_CATEGORIES.get(path)
        if category is None:
            return Refusal(UNIMPLEMENTED, f"{path} is not served by offload's front "
                                          "(only Triton's inference protocol and gRPC health)")
        if category in self.open_categories:
            return None
        presented = credential(headers)
        if presented is None:
            return Refusal(UNAUTHENTICATED, f"the {category} API of this server needs its "
                                            f"token ({_HOW})")
        if not self.matches(presented):
            return Refusal(PERMISSION_DENIED, f"the {category} API of this server refused the "
                                              f"token that came ({_HOW})")
        return None

    def matches(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), self.token.encode())


_HOW = (f"send it as 'authorization: Bearer <token>' or '{TOKEN_HEADER}'; "
        "offload.Client(token=...) does both")


def credential(headers: Iterable[tuple[str, str]]) -> str | None:
    """The token a request presents, from either header the client sends."""
    for name, value in headers:
        if name == "authorization" and value[:7].lower() == "bearer ":
            return value[7:].strip()
        if name in (TOKEN_HEADER, TOKEN_KEY):
            return value.strip()
    return None
