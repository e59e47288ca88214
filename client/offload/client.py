"""`offload.Client`: batched inference on one or more servers of the inference protocol.

    import offload

    with offload.Client(["gpu1.example.org:8001", "gpu2.example.org:8001"]) as client:
        tagger = client.model("jet_tagger")
        scores = tagger.infer(points=p, features=f, mask=m)["top_probability"]
        future = tagger.submit(points=p, features=f, mask=m)   # concurrent.futures.Future

A client is its configuration over a request engine (offload.engine: servers, deadlines,
retries, failover, the bound on requests in flight) and a transport (offload.transport:
tensors in the messages, or shared memory). :class:`offload.AsyncClient` is its asyncio
sibling over the same engine. Clients and models pickle as their configuration and connect
again where they are unpickled; after fork() a client builds new channels in the child.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from offload import codec, protocol, schema
from offload.endpoints import TLS, Backoff, parse_servers
from offload.engine import COMPRESSION, Engine, EngineOptions
from offload.errors import (
    AuthenticationError,
    DeadlineExceededError,
    InferenceError,
    ModelNotFoundError,
    NotSupportedError,
    OffloadError,
    ServerUnavailableError,
)
from offload.inputs import Prepared, check_piece_size, pieces, prepare
from offload.schema import ModelInfo, TensorInfo
from offload.stats import ClientStats, ServerStats, StatsRecorder, server_stats
from offload.tokens import TOKEN_VARIABLE
from offload.transport import MessageTransport, SharedMemoryTransport

log = logging.getLogger("offload")

T = TypeVar("T")


class _ClientBase:
    """What Client and AsyncClient share: configuration, engine, transport, lifecycle."""

    _model_class: type  # Model or AsyncModel

    def __init__(self, servers: str | Sequence[str] | None = None, *, timeout: float = 60.0,
                 retries: int = 4, token: str | None = None,
                 headers: Mapping[str, str] | None = None, tls: TLS | None = None,
                 compression: str | None = None, keepalive: float | None = None,
                 fallback: str | None = None, repository: str = "model_repository",
                 check_finite: bool = True, backoff: Backoff | None = None,
                 shared_memory: bool = False, pipeline: int = 16,
                 max_in_flight: int = 64) -> None:
        addresses = parse_servers(servers)
        if shared_memory and (len(addresses) != 1 or not _on_this_host(addresses[0])):
            raise ValueError("shared_memory=True needs exactly one server on this host "
                             f"(127.0.0.1, localhost, ::1 or unix:), got {addresses}")
        if not addresses and fallback != "local":
            raise ServerUnavailableError(
                "no server given: pass Client('host:8001'), a list, or set OFFLOAD_SERVERS "
                "(or fallback='local' to run one on this machine)")
        if compression not in COMPRESSION:
            raise ValueError(f"compression must be one of gzip, deflate or None, "
                             f"got {compression!r}")
        if pipeline < 1:
            raise ValueError(f"pipeline must be at least 1, got {pipeline}")
        token = token if token is not None else os.environ.get(TOKEN_VARIABLE) or None
        # Everything it takes to build this client again elsewhere (pickle): the token
        # travels with it, as a job's workers need it.
        self._config = {
            "servers": addresses, "timeout": timeout, "retries": retries, "token": token,
            "headers": dict(headers or {}), "tls": tls, "compression": compression,
            "keepalive": keepalive, "fallback": fallback, "repository": repository,
            "check_finite": check_finite, "backoff": backoff, "shared_memory": shared_memory,
            "pipeline": pipeline, "max_in_flight": max_in_flight}
        self.timeout = timeout
        self.retries = retries
        self.pipeline = pipeline
        self.check_finite = check_finite
        self.backoff = backoff or Backoff()
        self.fallback = fallback
        self.repository = repository
        self._engine = Engine(addresses, EngineOptions(
            timeout=timeout, retries=retries, backoff=self.backoff, tls=tls,
            compression=compression, keepalive=keepalive, token=token,
            headers=tuple((headers or {}).items()), max_in_flight=max_in_flight,
            fallback=fallback, repository=repository))
        self._transport: MessageTransport | SharedMemoryTransport = (
            SharedMemoryTransport(self._engine) if shared_memory else MessageTransport())
        self._models: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        # Frees channels, threads, regions and a fallback server when the client is
        # closed, or garbage-collected without close().
        self._finalizer = weakref.finalize(self, _release, self._transport, self._engine)

    @property
    def servers(self) -> list[str]:
        return [e.address for e in self._engine.pool.endpoints]

    @property
    def closed(self) -> bool:
        return self._engine.closed

    @property
    def _local_server(self) -> Any:
        """The embedded server a `fallback="local"` client started, if any."""
        return self._engine.local_server

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return _restore_client, (type(self), self._config)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<offload.{type(self).__name__} {','.join(self.servers) or '(fallback)'} {state}>"

    def _adopt(self, model_class: Callable[[Any, ModelInfo, str], T], info: ModelInfo,
               version: str) -> T:
        """The model handle for `info`, cached: one per (name, version) and client."""
        with self._lock:
            return self._models.setdefault((info.name, version),
                                           model_class(self, info, version))

    def _info(self, name: str, metadata: Any, config: Any,
              max_batch_size: int | None) -> ModelInfo:
        info = schema.model_info(metadata, config, max_batch_size=max_batch_size)
        if config is None:
            log.info("model '%s': the server has no ModelConfig; metadata only (max batch "
                     "size %d: %s)", name, info.max_batch_size,
                     "as given" if max_batch_size else "unknown, calls are not split")
        return info


def _release(transport: MessageTransport | SharedMemoryTransport, engine: Engine) -> None:
    transport.close()
    engine.close()


def _restore_client(cls: type[_ClientBase], config: dict[str, Any]) -> _ClientBase:
    options = dict(config)
    return cls(options.pop("servers"), **options)


def _restore_model(client: _ClientBase, info: ModelInfo, version: str) -> Any:
    return client._adopt(client._model_class, info, version)


class Client(_ClientBase):
    """A connection to one or more servers that serve the same models.

    Args:
        servers: "host:port", a list of them, or a comma-separated string; default: the
            OFFLOAD_SERVERS environment variable; port 8001 where none is given.
        timeout: overall deadline of one call in seconds, retries and waits included.
        retries: how many times a request is sent again after UNAVAILABLE or a full queue.
        token: a secret sent with every call, as `authorization: Bearer …` (read by
            `offload serve` and by the JWT proxy of a Kubernetes deployment) and as
            `triton-grpc-protocol-offload-token` (for a Triton started with that
            restricted-protocol key); default: the OFFLOAD_TOKEN environment variable.
            Never logged nor put in error messages (but a pickled client carries it).
        headers: further gRPC metadata sent with every call.
        tls: a :class:`TLS` to use TLS (root certificates, optional client certificate).
        compression: "gzip" or "deflate" for requests (None: off).
        keepalive: seconds between HTTP/2 keepalive pings on a call in flight (None: off).
        fallback: "local" to start an embedded server on this machine (needs the `server`
            extra) when no server is reachable; it serves `repository`.
        check_finite: refuse NaN/Inf in floating-point inputs before sending.
        shared_memory: pass tensors through POSIX shared memory instead of the messages;
            only with one server on this host (see offload.shm and perf/RESULTS.md).
        pipeline: requests of one call in flight at once (the pieces of a batch larger
            than max_batch_size, ragged entries).
        max_in_flight: requests in flight to one server from this client, all threads
            together; more wait (within their deadline) for a free slot. Keep it at or
            below the models' max_queue_size.
    """

    # ------------------------------------------------------------------ public
    def model(self, name: str, version: str | int | None = None, *,
              max_batch_size: int | None = None) -> Model:
        """A handle to a model; its metadata and config are fetched once and cached.
        `max_batch_size` caps the rows per request (and enables splitting on a server
        that reports none: one of the inference protocol without Triton's ModelConfig)."""
        key = (name, "" if version is None else str(version))
        with self._lock:
            if key in self._models and max_batch_size is None:
                return self._models[key]
        self._engine.want_model(name)
        info = self._fetch_info(name, key[1], max_batch_size)
        if max_batch_size is not None:
            return Model(self, info, key[1])
        return self._adopt(Model, info, key[1])

    def models(self) -> list[dict[str, str]]:
        """The repository index of a server: name, version, state, reason per model."""
        response = self._engine.call("RepositoryIndex",
                                     protocol.service_pb2.RepositoryIndexRequest(), model=None)
        return _index(response)

    def ready(self) -> bool:
        """Whether at least one server answers that it is ready."""
        return any(self.health(timeout=5).values())

    def health(self, timeout: float = 5.0) -> dict[str, bool]:
        """Probe every server (ServerReady), waiting up to `timeout` for a connection; a
        server that answers ready closes its circuit breaker, one that does not counts as
        a failure."""
        return self._engine.health(timeout)

    def close(self) -> None:
        """Close the channels (and stop a fallback server this client started). Calls
        after close() raise ClientClosedError."""
        self._finalizer()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------- internals
    def _fetch_info(self, name: str, version: str, max_batch_size: int | None) -> ModelInfo:
        try:
            return self._fetch_info_once(name, version, max_batch_size)
        except ModelNotFoundError:
            if self._engine.local_server is None:
                raise
        # The local fallback server loads models on demand (explicit control mode).
        log.info("loading model '%s' into the local fallback server", name)
        self._engine.call("RepositoryModelLoad",
                          protocol.service_pb2.RepositoryModelLoadRequest(model_name=name),
                          model=name)
        return self._fetch_info_once(name, version, max_batch_size)

    def _fetch_info_once(self, name: str, version: str,
                         max_batch_size: int | None) -> ModelInfo:
        pb = protocol.service_pb2
        call = self._engine.call
        try:
            metadata = call("ModelMetadata", pb.ModelMetadataRequest(name=name, version=version),
                            model=name)
            try:
                config = call("ModelConfig", pb.ModelConfigRequest(name=name, version=version),
                              model=name)
            except NotSupportedError:
                config = None
        except ModelNotFoundError as error:
            raise ModelNotFoundError(f"{error}; the server has: {self._known_models()}",
                                     model=name) from None
        return self._info(name, metadata, config, max_batch_size)

    def _known_models(self) -> str:
        try:
            names = sorted({m["name"] for m in self.models() if m["state"] == "READY"})
        except AuthenticationError:
            return "(its model index needs the server's token)"
        except OffloadError:
            return "(could not list)"
        return ", ".join(names) or "no ready model"


def _index(response: Any) -> list[dict[str, str]]:
    return [{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}
            for m in response.models]


def _on_this_host(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1") or address.startswith("unix:")


# ---------------------------------------------------------------- models
class _ModelBase:
    """What Model and AsyncModel share: the model's description, checks and counters."""

    def __init__(self, client: _ClientBase, info: ModelInfo, version: str) -> None:
        self._client = client
        self.info = info
        self.version = version
        self._stats = StatsRecorder(info.name)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        return self.info.inputs

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        return self.info.outputs

    @property
    def max_batch_size(self) -> int:
        return self.info.max_batch_size

    def __repr__(self) -> str:
        shown = ", ".join(t.describe() for t in self.inputs)
        return (f"<offload.{type(self).__name__} {self.name} ({shown}) "
                f"max_batch_size={self.max_batch_size}>")

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return _restore_model, (self._client, self.info, self.version)

    def stats(self) -> ClientStats:
        """This client's counters and latency percentiles for the model."""
        return self._stats.snapshot()

    def _prepare(self, target: _ModelBase, arrays: dict[str, Any]) -> Prepared:
        self._stats.call()
        try:
            return prepare(target.info, arrays,
                                   check_finite=self._client.check_finite)
        except InferenceError:
            self._stats.failure()
            raise

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (timeout or self._client.timeout)

    async def _infer_async(self, target: _ModelBase, prepared: Prepared,
                           deadline: float) -> dict[str, np.ndarray]:
        """A prepared call on the running loop: its pieces, `pipeline` at a time, one
        deadline for all."""
        client = self._client
        engine, transport, info = client._engine, client._transport, target.info
        version, stats = target.version, self._stats
        results = await windowed(
            pieces(prepared, info.max_batch_size),
            lambda piece: transport.asend(engine, info, version, piece, deadline=deadline,
                                          stats=stats),
            client.pipeline)
        return codec.concatenate(results)


class Model(_ModelBase):
    """A model on the client's servers. Thread-safe; obtain with :meth:`Client.model`."""

    _client: Client

    def infer(self, inputs: Mapping[str, Any] | None = None, /, *,
              timeout: float | None = None, version: str | int | None = None,
              **named: Any) -> dict[str, np.ndarray]:
        """Run the model on a batch; returns {output name: array}. Batches larger than
        max_batch_size are split, sent pipelined and reassembled in order. Numeric outputs
        are read-only views of the response (`.copy()` to modify)."""
        target = self._for_version(version)
        prepared = self._prepare(target, named if inputs is None else {**inputs, **named})
        if prepared.batch is not None and prepared.batch > target.info.max_batch_size > 0:
            return _wait(self._submit_prepared(target, prepared, timeout), timeout,
                         self._client, self.name)
        client = self._client
        # One request: on this thread, without a future's hand-offs.
        return client._transport.send(client._engine, target.info, target.version, prepared,
                                      timeout=timeout, stats=self._stats)

    def submit(self, inputs: Mapping[str, Any] | None = None, /, *,
               timeout: float | None = None, version: str | int | None = None,
               **named: Any) -> concurrent.futures.Future:
        """Like :meth:`infer`, returning a concurrent.futures.Future at once. Input errors
        raise here, before anything is sent; the future completes within the deadline."""
        target = self._for_version(version)
        return self._submit_prepared(target, self._prepare(target, {**(inputs or {}), **named}),
                                     timeout)

    def infer_ragged(self, entries: Sequence[Mapping[str, Any]], *,
                     timeout: float | None = None) -> list[dict[str, np.ndarray]]:
        """One request per entry (entries may differ in shape, e.g. jets with different
        numbers of constituents), `pipeline` of them in flight at once; results in the
        entries' order. The first error raises (the entries in flight still finish)."""
        window: collections.deque[concurrent.futures.Future] = collections.deque()
        results = []
        for entry in entries:
            window.append(self.submit(entry, timeout=timeout))
            if len(window) >= self._client.pipeline:
                results.append(_wait(window.popleft(), timeout, self._client, self.name))
        results += [_wait(future, timeout, self._client, self.name) for future in window]
        return results

    def server_stats(self) -> list[ServerStats]:
        """Triton's statistics for the model (from the server the request lands on)."""
        request = protocol.service_pb2.ModelStatisticsRequest(name=self.name,
                                                              version=self.version)
        return server_stats(self._client._engine.call("ModelStatistics", request,
                                                      model=self.name))

    def _submit_prepared(self, target: Model, prepared: Prepared,
                         timeout: float | None) -> concurrent.futures.Future:
        check_piece_size(target.info, prepared)
        client = self._client
        engine, transport, info = client._engine, client._transport, target.info
        deadline = self._deadline(timeout)
        version, stats = target.version, self._stats

        def blocking() -> dict[str, np.ndarray]:  # (where asyncio cannot run: see spawn)
            return codec.concatenate([
                transport.send(engine, info, version, piece, stats=stats,
                               timeout=max(deadline - time.monotonic(), 1e-3))
                for piece in pieces(prepared, info.max_batch_size)])

        return engine.spawn(lambda: self._infer_async(target, prepared, deadline), blocking)

    def _for_version(self, version: str | int | None) -> Model:
        if version is None or str(version) == self.version:
            return self
        return self._client.model(self.name, version)


Client._model_class = Model


def _wait(future: concurrent.futures.Future, timeout: float | None, client: _ClientBase,
          model: str) -> Any:
    """A future's result, never waiting longer than the call's deadline (and a grace for
    the answer to arrive): a lost future cannot hang its caller."""
    try:
        return future.result(timeout=(timeout or client.timeout) + 10)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise DeadlineExceededError(f"model '{model}': no result within the deadline",
                                    model=model) from None


async def windowed(items: Iterable[Any], send: Callable[[Any], Awaitable[T]],
                   depth: int) -> list[T]:
    """`send` each item, at most `depth` in flight (built only when sent), results in
    order; the first error in order raises and cancels the rest. A bounded window keeps a
    huge call from flooding the server's queue or this process's memory."""
    running: collections.deque[asyncio.Future] = collections.deque()
    results: list[T] = []
    try:
        for item in items:
            running.append(asyncio.ensure_future(send(item)))
            if len(running) >= depth:
                results.append(await running.popleft())
        while running:
            results.append(await running.popleft())
    except BaseException:
        for task in running:
            task.cancel()
        raise
    return results
