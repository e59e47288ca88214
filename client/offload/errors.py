"""The one exception hierarchy of offload.

Every failure a user can meet, on the client or the embedded-server side, is an
:class:`OffloadError`. Messages say what was wrong and what was expected, and name the
model and tensor where there is one.
"""

from __future__ import annotations


class OffloadError(Exception):
    """Base class of every offload exception."""


class ServerError(OffloadError):
    """The embedded Triton server could not be found, started or stopped."""


class TritonNotInstalledError(ServerError):
    """The `nvidia-pytriton` wheel, which carries the `tritonserver` binary, is missing."""


class PortInUseError(ServerError):
    """A port the server was asked to listen on is taken."""


class ServerStartError(ServerError):
    """`tritonserver` exited or did not become ready; the message carries its own errors."""


class ModelRepositoryError(OffloadError):
    """A model repository, a model's `config.pbtxt` or its artifact is wrong.

    `problems` lists each disagreement on its own when there are several.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]
