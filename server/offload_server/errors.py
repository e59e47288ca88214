"""The errors only the server side raises: starting the embedded Triton server, and model
repositories (a config, an artifact). Each is an :class:`offload.OffloadError`, so one
`except offload.OffloadError` still catches every failure; the thin client carries none of
them."""

from __future__ import annotations

from offload.errors import OffloadError


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
