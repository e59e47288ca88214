"""The KServe v2 / Triton gRPC protocol: message classes, method paths, error mapping.

The generated protobuf classes come from tritonclient's stubs (imported here, on first
use of a client, not by `import offload`). Calls go through generic unary-unary methods on
a channel, so no generated service stub is needed.
"""

from __future__ import annotations

import grpc
from tritonclient.grpc import model_config_pb2, service_pb2  # noqa: F401  (re-exported)

from offload.errors import (
    AuthenticationError,
    DeadlineExceededError,
    InferenceError,
    InvalidInputError,
    MessageTooLargeError,
    ModelNotFoundError,
    NotSupportedError,
    ProtocolError,
    ServerInferenceError,
    ServerOverloadedError,
    ServerUnavailableError,
    SharedMemoryError,
)

SERVICE = "/inference.GRPCInferenceService/"

#: method -> (request class, response class)
METHODS = {
    "ServerLive": (service_pb2.ServerLiveRequest, service_pb2.ServerLiveResponse),
    "ServerReady": (service_pb2.ServerReadyRequest, service_pb2.ServerReadyResponse),
    "ModelReady": (service_pb2.ModelReadyRequest, service_pb2.ModelReadyResponse),
    "ModelMetadata": (service_pb2.ModelMetadataRequest, service_pb2.ModelMetadataResponse),
    "ModelConfig": (service_pb2.ModelConfigRequest, service_pb2.ModelConfigResponse),
    "ModelInfer": (service_pb2.ModelInferRequest, service_pb2.ModelInferResponse),
    "ModelStatistics": (service_pb2.ModelStatisticsRequest, service_pb2.ModelStatisticsResponse),
    "RepositoryIndex": (service_pb2.RepositoryIndexRequest, service_pb2.RepositoryIndexResponse),
    "RepositoryModelLoad": (service_pb2.RepositoryModelLoadRequest,
                            service_pb2.RepositoryModelLoadResponse),
    "SystemSharedMemoryRegister": (service_pb2.SystemSharedMemoryRegisterRequest,
                                   service_pb2.SystemSharedMemoryRegisterResponse),
    "SystemSharedMemoryUnregister": (service_pb2.SystemSharedMemoryUnregisterRequest,
                                     service_pb2.SystemSharedMemoryUnregisterResponse),
}

#: gRPC's own limit on one message (a signed 32-bit length).
MAX_MESSAGE_BYTES = 2**31 - 1

# Retried (to this or another server): UNAVAILABLE (down or unreachable) and a full queue
# (see overloaded()). Inference on the project's stateless models is idempotent, so a retry
# after UNAVAILABLE is safe even in the rare case that the first attempt did run
# (at-least-once execution, exactly-once result to the caller).


def overloaded(code: grpc.StatusCode | None, details: str) -> bool:
    """Refused by the queue policy: Triton answers UNAVAILABLE "Exceeds maximum queue size"
    when a model's max_queue_size is reached, and "Request timeout expired" when a request
    waited longer than the queue's timeout; proxies answer RESOURCE_EXHAUSTED (rate limits,
    overflow). Either way the request never ran and the server is up: retry later or
    elsewhere (safe: at most once), but do not count the server as down. RESOURCE_EXHAUSTED
    about a message's size or gRPC's metadata limit is no overload."""
    if code == grpc.StatusCode.UNAVAILABLE:
        lowered = details.lower()
        return "exceeds maximum queue size" in lowered or "request timeout expired" in lowered
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and not _too_large(details) \
        and not _metadata_limit(details)


def _too_large(details: str) -> bool:
    lowered = details.lower()
    return "message larger" in lowered or "larger than max" in lowered


def _metadata_limit(details: str) -> bool:
    return "metadata" in details.lower()


def refused_credentials(code: grpc.StatusCode | None, details: str) -> bool:
    """Triton answers a missing restricted-protocol header with UNAVAILABLE; proxies with
    UNAUTHENTICATED or PERMISSION_DENIED. None of them is worth a retry."""
    return code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or (
        code == grpc.StatusCode.UNAVAILABLE and "protocol is restricted" in details)


def method(channel: grpc.Channel, name: str) -> grpc.UnaryUnaryMultiCallable:
    """A callable for one RPC. ModelInfer takes and returns serialised bytes (offload.wire
    builds and reads them); the others take and return messages."""
    if name == "ModelInfer":
        # No (de)serialiser: gRPC passes bytes through as they are, without a Python call.
        return channel.unary_unary(SERVICE + name)
    request, response = METHODS[name]
    return channel.unary_unary(SERVICE + name, request_serializer=request.SerializeToString,
                               response_deserializer=response.FromString)


def region_missing(details: str) -> bool:
    """Whether the server says it has no shared-memory region of the name a request used
    (it restarted, or the region was unregistered): Triton answers NOT_FOUND, like a
    missing model."""
    return "shared memory region" in details.lower()


def model_missing(code: grpc.StatusCode | None, details: str) -> bool:
    """Whether the server says it has no such model (or version), or it is not ready."""
    if region_missing(details):
        return False
    lowered = details.lower()
    return code == grpc.StatusCode.NOT_FOUND or (
        code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAVAILABLE,
                 grpc.StatusCode.UNKNOWN)
        and ("unknown model" in lowered or "is not found" in lowered
             or "not ready" in lowered or "has no available versions" in lowered
             # other servers of the protocol: KServe's "ModelNotFound: Model with name x
             # does not exist", MLServer's "Model x not found"
             or "modelnotfound" in lowered or ("model" in lowered and (
                 "does not exist" in lowered or "not found" in lowered))))


def model_reloading(code: grpc.StatusCode | None, details: str) -> bool:
    """Whether the model exists but has no version serving right now: Triton says a model
    "has no available versions" while it loads, reloads or drains a version, and a version
    "is not ready" meanwhile. Transient: worth waiting for within the deadline."""
    if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.INVALID_ARGUMENT):
        return False
    return "has no available versions" in details or "is not ready" in details


def translate(error: grpc.RpcError, *, model: str | None, server: str) -> InferenceError:
    """An offload exception for a failed call, saying what the server said."""
    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else str(error)) or ""
    where = f"model '{model}' on {server}" if model else server
    if refused_credentials(code, details):
        advice = "" if "offload.Client(" in details else \
            " (pass the token or headers it expects to offload.Client)"
        return AuthenticationError(f"{where} refused the credentials: {details}{advice}",
                                   model=model)
    if overloaded(code, details):
        return ServerOverloadedError(f"{where}: refused by the model's queue policy, the "
                                     f"queue is full or too slow ({details}); retries ran "
                                     "out: send less, or add servers",
                                     model=model)
    if region_missing(details):
        return SharedMemoryError(f"{where}: {details}", model=model)
    if model_missing(code, details):
        return ModelNotFoundError(f"{where}: {details}", model=model)
    if code == grpc.StatusCode.UNAVAILABLE:
        return ServerUnavailableError(f"{server} is unavailable: {details}", model=model)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceededError(f"{where}: deadline exceeded before a result came",
                                     model=model)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        if _metadata_limit(details):
            return ProtocolError(f"{where}: the answer exceeded gRPC's limits ({details})",
                                 model=model)
        return MessageTooLargeError(f"{where}: {details}", model=model)
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return NotSupportedError(f"{where} does not implement this ({details})", model=model)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidInputError(f"{where} refused the request: {details}", model=model)
    return ServerInferenceError(f"{where} failed ({code.name if code else 'error'}): {details}",
                                model=model)
