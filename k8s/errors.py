"""Deploy errors are offload errors: the CLI prints their message, no traceback."""

from offload.errors import OffloadError


class DeployError(OffloadError):
    """Something the person deploying can act on: no kubeconfig, no GPU nodes, ..."""
