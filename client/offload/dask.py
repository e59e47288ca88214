"""Offload models from Dask workers (dask.distributed, dask-awkward, coffea).

A Dask task runs in a worker process, often on another machine, so it cannot use a client
made in the driver. :func:`model` gives a task a model on a client that is made once per
worker process (per server list and options) and reused by every later task there: the
connection, the model's metadata and the gRPC channel survive from task to task. Only
strings and numbers travel with a task.

    import dask_awkward as dak, uproot
    from offload.dask import JetScorer

    events = uproot.dask({"nano.root": "Events"}, filter_name=JetScorer.branches)
    scorer = JetScorer(["jet_tagger", "jet_energy_regression"], servers="gpu1:8001")
    scores = dak.map_partitions(scorer, events)     # per event: one record per fat jet
    scores.compute()                                 # on the current Dask scheduler

or, with plain distributed, ``client.submit(my_task, ...)`` where ``my_task`` calls
``offload.dask.model("jet_tagger", servers).infer(...)``. See examples/dask_jets.py.
Needs ``offload[hep]`` (awkward, dask); importing this module imports neither.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from offload.endpoints import parse_servers
from offload.errors import InvalidInputError
from offload.physics.pfnano import BRANCHES

_CLIENTS: dict[tuple, Any] = {}
_LOCK = threading.Lock()


def client(servers: str | Sequence[str] | None = None, **options: Any):
    """This process's :class:`offload.Client` for `servers` (default ``$OFFLOAD_SERVERS``)
    and client `options` (timeout, retries, token, ...): made on first use, then cached.
    The cache is per process id, so a forked child makes its own."""
    from offload.client import Client

    addresses = tuple(parse_servers(servers)) or ("127.0.0.1:8001",)
    key = (os.getpid(), addresses, tuple(sorted((k, repr(v)) for k, v in options.items())))
    with _LOCK:
        found = _CLIENTS.get(key)
        if found is None or found.closed:
            found = _CLIENTS[key] = Client(list(addresses), **options)
        return found


def model(name: str, servers: str | Sequence[str] | None = None, **options: Any):
    """A model on this process's cached client (see :func:`client`)."""
    return client(servers, **options).model(name)


def close_clients() -> None:
    """Close this process's cached clients (also done at exit)."""
    with _LOCK:
        mine = [c for key, c in _CLIENTS.items() if key[0] == os.getpid()]
        _CLIENTS.clear()
    for found in mine:
        found.close()


atexit.register(close_clients)


class JetScorer:
    """The jet models on the fat jets of PFNano events, as a function of a partition.

    Called with a chunk of events (an awkward array with the PFNano branches of
    :data:`branches`, e.g. a partition of ``uproot.dask(...)``), it returns per event one
    record per fat jet, with a field per model output (e.g. ``top_probability``,
    ``pt_correction``), aligned with ``FatJet``. It holds only names, so it pickles to any
    worker; each worker process talks to the servers through its cached client.

    `outputs` ({model: [output names]}) is fetched from the server when not given, once, in
    the process that makes the scorer. Called on a typetracer (dask-awkward working out the
    graph and the columns it needs) it touches the branches it reads and returns the
    result's type without sending anything.
    """

    branches = BRANCHES

    def __init__(self, models: Sequence[str], servers: str | Sequence[str] | None = None,
                 *, outputs: dict[str, Sequence[str]] | None = None,
                 **client_options: Any) -> None:
        self.models = tuple(models)
        if not self.models:
            raise InvalidInputError("JetScorer needs at least one model")
        self.servers = tuple(parse_servers(servers)) or ("127.0.0.1:8001",)
        self.client_options = client_options
        if outputs is None:
            outputs = {m: [t.name for t in model(m, self.servers, **client_options).outputs]
                       for m in self.models}
        self.outputs = {m: tuple(outputs[m]) for m in self.models}

    def __call__(self, events: Any) -> Any:
        import awkward as ak

        from offload.physics import pfnano

        if ak.backend(events) == "typetracer":
            for name in self.branches:
                ak.typetracer.touch_data(events[name])
            return ak.Array(self._empty().layout.to_typetracer(forget_length=True))
        gathered = pfnano.gather(events)
        inputs = gathered.inputs(self.models)
        futures = {m: model(m, self.servers, **self.client_options).submit(inputs[m])
                   for m in self.models if gathered.n_jets}
        fields = {}
        for m in self.models:
            result = futures[m].result() if m in futures else None
            for name in self.outputs[m]:
                values = (result[name].reshape(gathered.n_jets) if result is not None
                          else np.zeros(0, np.float32))
                fields[name] = ak.unflatten(values, gathered.jets_per_event)
        return ak.zip(fields)

    def _empty(self) -> Any:
        import awkward as ak

        fields = {name: ak.unflatten(np.zeros(0, np.float32), np.zeros(0, np.int64))
                  for m in self.models for name in self.outputs[m]}
        return ak.zip(fields)
