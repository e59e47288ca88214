"""How a worker runs its models: in-process (the server's own runner code, one thread), or
offloaded through the offload client, request by request or through a Batcher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import offload
from offload_perf.gridsim.choices import SHOWER_MODEL
from offload_perf.gridsim.errors import GridSimError

#: offloaded_batched: jets the Batcher of a jet model merges and preprocesses at once.
BATCH_ROWS = 256


def in_process(repository: Path, models: list[str],
               versions: dict[str, str | None] | None = None) -> dict[str, Any]:
    """Each model's runner, loaded in this process by `load_in_process` with one thread
    (ONE_THREAD): the version `versions` names, else the one a request naming none gets (the
    highest the config serves)."""
    from offload_server.backends import load_in_process

    return {name: load_in_process(repository / name, (versions or {}).get(name) or None,
                                  one_thread=True) for name in models}


def offloaded(address: str, models: list[str], timeout: float,
              versions: dict[str, str | None] | None = None,
              ) -> tuple[offload.Client, dict[str, offload.Model]]:
    """A client of the server at `address` and its handle of each model (pinned to the
    version `versions` names, if any)."""
    client = offload.Client(address, timeout=timeout, retries=2)
    return client, {name: client.model(name, version=(versions or {}).get(name))
                    for name in models}


def batchers(remote: dict[str, offload.Model], models: list[str]) -> dict[str, Any]:
    """offloaded_batched: one Batcher feeding both jet models from each event's jets (their
    shared features computed once per BATCH_ROWS jets, in the models' request sizes), and
    the shower generator's own; keyed "jets" and SHOWER_MODEL."""
    from offload.batching import Batcher
    from offload.physics.jets import inputs_for

    jet_models = [m for m in models if m != SHOWER_MODEL]
    out: dict[str, Any] = {}
    if jet_models:
        out["jets"] = Batcher(
            [remote[m] for m in jet_models], max_delay=None, max_batch_size=BATCH_ROWS,
            prepare=lambda raw: inputs_for(jet_models, raw["constituents"], raw["jets"]))
    if SHOWER_MODEL in models:
        out[SHOWER_MODEL] = Batcher(remote[SHOWER_MODEL], max_delay=None)
    return out


def use(outputs: dict[str, dict[str, np.ndarray]]) -> None:
    """The job uses its answers (and a model returning NaN stops the run)."""
    for result in outputs.values():
        for value in result.values():
            if not np.all(np.isfinite(value)):
                raise GridSimError("a model returned non-finite values")
