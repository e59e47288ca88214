"""The one exception hierarchy of offload.

Every failure a user can meet, on the client or the embedded-server side, is an
:class:`OffloadError`. Messages say what was wrong and what was expected, and name the
model and tensor where there is one. The errors only the server side raises (starting the
embedded server, model repositories) live with it, in `offload_server.errors`.
"""

from __future__ import annotations


class OffloadError(Exception):
    """Base class of every offload exception."""


# ----------------------------------------------------------------- inference
class InferenceError(OffloadError):
    """An inference did not return a result. `model` names the model where known."""

    def __init__(self, message: str, *, model: str | None = None) -> None:
        super().__init__(message)
        self.model = model


class InvalidInputError(InferenceError, ValueError):
    """Input refused before anything was sent: names, dtypes, shapes, batch, values."""


class ModelNotFoundError(InferenceError, LookupError):
    """The server has no such model, or not that version, or it is not ready."""


class ServerUnavailableError(InferenceError, ConnectionError):
    """No server could be reached (after retries and failover, within the deadline)."""


class DeadlineExceededError(InferenceError, TimeoutError):
    """The call's overall deadline passed before a result came."""


class ServerOverloadedError(InferenceError):
    """The server refused the request because its queue is full (retried with backoff
    until the deadline; raised if it stays full)."""


class MessageTooLargeError(InvalidInputError):
    """A request or response would exceed gRPC's 2 GB message limit."""


class ServerInferenceError(InferenceError):
    """The server accepted the request but the model failed on it (not retried)."""


class ProtocolError(InferenceError):
    """A response could not be decoded: a malformed message or tensor (e.g. a BYTES
    tensor whose length prefixes overrun it). Not retried: the server answered."""


class NotSupportedError(InferenceError):
    """The server does not implement what was asked (gRPC UNIMPLEMENTED): e.g. shared
    memory on a server of the inference protocol that is not Triton."""


class AuthenticationError(InferenceError, PermissionError):
    """The server (or a proxy in front of it) refused the credentials: a missing or wrong
    token or header. Not retried."""


class SharedMemoryError(InferenceError):
    """A shared-memory region could not be registered with the server, or the server lost
    it (restarted, or the region was unregistered) and registering it again failed."""


class ClientClosedError(OffloadError, RuntimeError):
    """A call on a client after its close(): create a new client."""
