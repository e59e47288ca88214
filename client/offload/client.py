"""`offload.Client`: batched inference on one or more Triton servers, over gRPC.

    import offload

    with offload.Client(["gpu1.example.org:8001", "gpu2.example.org:8001"]) as client:
        tagger = client.model("jet_tagger")
        scores = tagger.infer(points=p, features=f, mask=m)["top_probability"]
        future = tagger.submit(points=p, features=f, mask=m)   # concurrent.futures.Future

One gRPC channel per server. Each request goes to the server with the least expected wait
(outstanding requests × observed latency); a request that meets an unavailable or
overloaded server is retried with exponential backoff and jitter on another server, within
the call's overall deadline; a server failing repeatedly is skipped for a while (circuit
breaker). Inputs are checked against the model's metadata before anything is sent.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from offload import tensors
from offload.endpoints import TLS, Backoff, Endpoint, EndpointPool, parse_servers
from offload.errors import (
    AuthenticationError,
    DeadlineExceededError,
    InferenceError,
    ModelNotFoundError,
    OffloadError,
    ServerUnavailableError,
    SharedMemoryError,
)
from offload.stats import ClientStats, ServerStats, StatsRecorder, server_stats
from offload.tensors import ModelInfo, TensorInfo
from offload.tokens import TOKEN_HEADER, TOKEN_VARIABLE

log = logging.getLogger("offload")

# None: leave compression out of the call altogether (the cheapest path).
COMPRESSION = {None: None, "none": None, "gzip": grpc.Compression.Gzip,
               "deflate": grpc.Compression.Deflate}


class Client:
    """A connection to one or more Triton servers that serve the same model repository.

    Args:
        servers: "host:port", a list of them, or a comma-separated string; default: the
            OFFLOAD_SERVERS environment variable.
        timeout: overall deadline of one call in seconds, retries included.
        retries: how many times a request is sent again after UNAVAILABLE or a full queue.
        token: a secret sent with every call, as `authorization: Bearer …` (read by
            `offload serve` and by the JWT proxy of a Kubernetes deployment) and as
            `triton-grpc-protocol-offload-token` (for a Triton started with that
            restricted-protocol key); default: the OFFLOAD_TOKEN environment variable.
            Never logged nor put in error messages.
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
            than max_batch_size, ragged entries); keep it at or below the models'
            max_queue_size.
    """

    def __init__(self, servers: str | Sequence[str] | None = None, *, timeout: float = 60.0,
                 retries: int = 4, token: str | None = None,
                 headers: Mapping[str, str] | None = None, tls: TLS | None = None,
                 compression: str | None = None, keepalive: float | None = None,
                 fallback: str | None = None, repository: str = "model_repository",
                 check_finite: bool = True, backoff: Backoff | None = None,
                 shared_memory: bool = False, pipeline: int = 16) -> None:
        addresses = parse_servers(servers)
        if shared_memory and (len(addresses) != 1 or not _on_this_host(addresses[0])):
            raise ValueError("shared_memory=True needs exactly one server on this host "
                             f"(127.0.0.1, localhost or ::1), got {addresses}")
        if not addresses and fallback != "local":
            raise ServerUnavailableError(
                "no server given: pass Client('host:8001'), a list, or set OFFLOAD_SERVERS "
                "(or fallback='local' to run one on this machine)")
        if compression not in COMPRESSION:
            raise ValueError(f"compression must be one of gzip, deflate or None, "
                             f"got {compression!r}")
        if fallback not in (None, "local"):
            raise ValueError(f"fallback must be None or 'local', got {fallback!r}")
        if pipeline < 1:
            raise ValueError(f"pipeline must be at least 1, got {pipeline}")
        self.timeout = timeout
        self.retries = retries
        self.pipeline = pipeline
        self.check_finite = check_finite
        self.backoff = backoff or Backoff()
        self.fallback = fallback
        self.repository = repository
        self._tls = tls
        self._compression = COMPRESSION[compression]
        self._options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        if keepalive:
            self._options += [("grpc.keepalive_time_ms", int(keepalive * 1000)),
                              ("grpc.keepalive_timeout_ms", 20_000)]
        self._headers = dict(headers or {})
        self._token = token if token is not None else os.environ.get(TOKEN_VARIABLE) or None
        self._call_options = self._options_for(self._token)
        self._pool = EndpointPool([self._endpoint(a) for a in addresses])
        self._models: dict[tuple[str, str], Model] = {}
        self._lock = threading.Lock()
        self._local_server: Any = None
        self._io_loop: _IOLoop | None = None
        self._thread_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed = False
        self._regions = None
        if shared_memory:
            from offload import shm

            pb = _pb()
            self._regions = shm.RegionPool(
                lambda r: self._call("SystemSharedMemoryRegister",
                                     pb.SystemSharedMemoryRegisterRequest(
                                         name=r.name, key=r.key, offset=0, byte_size=r.size),
                                     model=None),
                lambda r: self._call("SystemSharedMemoryUnregister",
                                     pb.SystemSharedMemoryUnregisterRequest(name=r.name),
                                     model=None, timeout=5))

    # ------------------------------------------------------------------ public
    def model(self, name: str, version: str | int | None = None) -> Model:
        """A handle to a model; its metadata and config are fetched once and cached."""
        key = (name, "" if version is None else str(version))
        with self._lock:
            if key in self._models:
                return self._models[key]
        info = self._fetch_info(name, key[1])
        with self._lock:
            return self._models.setdefault(key, Model(self, info, key[1]))

    def models(self) -> list[dict[str, str]]:
        """The repository index of a server: name, version, state, reason per model."""
        response = self._call("RepositoryIndex", _pb().RepositoryIndexRequest(), model=None)
        return [{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}
                for m in response.models]

    def ready(self) -> bool:
        """Whether at least one server answers that it is ready."""
        return any(self.health(timeout=5).values())

    def health(self, timeout: float = 5.0) -> dict[str, bool]:
        """Probe every server (ServerReady); a server that answers ready closes its circuit
        breaker, one that does not counts as a failure."""
        status = {}
        for endpoint in self._pool.endpoints:
            try:
                ready = endpoint.method("ServerReady")(
                    _pb().ServerReadyRequest(), timeout=timeout,
                    metadata=endpoint.call_options.get("metadata")).ready
            except grpc.RpcError:
                ready = False
            endpoint.record_probe(ready)
            status[endpoint.address] = ready
        return status

    @property
    def servers(self) -> list[str]:
        return [e.address for e in self._pool.endpoints]

    def close(self) -> None:
        """Close the channels (and stop a fallback server this client started)."""
        if self._closed:
            return
        self._closed = True
        if self._thread_pool is not None:
            self._thread_pool.shutdown(wait=True)
        if self._regions is not None:
            self._regions.close()
        if self._io_loop is not None:
            self._io_loop.close(self._pool.endpoints)
        self._pool.close()
        if self._local_server is not None:
            self._local_server.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------- internals
    def _endpoint(self, address: str, token: str | None = None) -> Endpoint:
        """A server; `token` replaces the client's own for it (a fallback server's)."""
        endpoint = Endpoint(address, tls=self._tls, options=self._options)
        endpoint.call_options = self._call_options if token is None else \
            self._options_for(token)
        return endpoint

    def _options_for(self, token: str | None) -> dict[str, Any]:
        """The call options that go with every call: headers, the token, compression (only
        those in use: each keyword costs gRPC a few µs per call)."""
        metadata = dict(self._headers)
        if token:
            metadata["authorization"] = f"Bearer {token}"
            metadata.setdefault(TOKEN_HEADER, token)
        pairs = tuple((k.lower(), v) for k, v in metadata.items()) or None
        return {key: value for key, value in (("metadata", pairs),
                                              ("compression", self._compression))
                if value is not None}

    def _fetch_info(self, name: str, version: str) -> ModelInfo:
        try:
            return self._fetch_info_once(name, version)
        except ModelNotFoundError:
            if self._local_server is None:
                raise
        # The local fallback server loads models on demand (explicit control mode).
        log.info("loading model '%s' into the local fallback server", name)
        self._call("RepositoryModelLoad", _pb().RepositoryModelLoadRequest(model_name=name),
                   model=name)
        return self._fetch_info_once(name, version)

    def _fetch_info_once(self, name: str, version: str) -> ModelInfo:
        pb = _pb()
        try:
            metadata = self._call("ModelMetadata",
                                  pb.ModelMetadataRequest(name=name, version=version), model=name)
            config = self._call("ModelConfig", pb.ModelConfigRequest(name=name, version=version),
                                model=name)
        except ModelNotFoundError as error:
            raise ModelNotFoundError(f"{error}; the server has: {self._known_models()}",
                                     model=name) from None
        return tensors.model_info(metadata, config)

    def _known_models(self) -> str:
        try:
            names = sorted({m["name"] for m in self.models() if m["state"] == "READY"})
        except AuthenticationError:
            return "(its model index needs the server's token)"
        except OffloadError:
            return "(could not list)"
        return ", ".join(names) or "no ready model"

    def _call(self, method: str, request: Any, *, model: str | None,
              timeout: float | None = None, rows: int = 0,
              stats: StatsRecorder | None = None) -> Any:
        """A unary call on this thread, with retries and failover. The first attempt runs
        inline, and an _Attempts takes over only if it fails: a call that succeeds at once
        (nearly all) pays for nothing else; at 16 B every µs shows (perf/RESULTS.md)."""
        started = time.monotonic()
        deadline = started + (timeout or self.timeout)
        if deadline <= started or not self._pool.endpoints:
            return _Attempts(self, method, request, model, rows, stats, deadline).blocking()
        endpoint = self._pool.choose()
        endpoint.began()
        try:
            response = endpoint.method(method)(request, timeout=deadline - started,
                                               **endpoint.call_options)
        except grpc.RpcError as error:
            attempts = _Attempts(self, method, request, model, rows, stats, deadline)
            attempts.last_server = endpoint.address
            time.sleep(attempts._failed(endpoint, error))
            return attempts.blocking()
        _succeeded(endpoint, started, response, stats, rows, request)
        return response

    def _workers(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._thread_pool is None:
                self._thread_pool = concurrent.futures.ThreadPoolExecutor(
                    8, thread_name_prefix="offload-shm")
            return self._thread_pool

    def _io(self) -> _IOLoop:
        with self._lock:
            if self._io_loop is None:
                self._io_loop = _IOLoop()
            return self._io_loop

    def _start_fallback(self, model: str | None) -> bool:
        """Start the embedded server once; True if it runs (a new endpoint)."""
        if self.fallback != "local":
            return False
        with self._lock:
            if self._local_server is not None:
                return True
            try:
                from offload_server import LocalServer
            except ImportError:
                log.error("fallback='local' needs the server side: pip install 'offload[server]'")
                return False
            log.warning("no server reachable: starting a local one with %s", self.repository)
            models = sorted({m for (m, _) in self._models} | ({model} if model else set()))
            try:
                # With this client's token, if it has one; else the server generates one
                # for its restricted APIs, and this client is the one that holds it.
                self._local_server = LocalServer(self.repository, models=models or None,
                                                 token=self._token).start()
            except OffloadError as error:
                log.error("local fallback server failed to start: %s", error)
                return False
            # Its owner talks to Triton's private socket (this user's alone): no front in
            # the way; other local users reach only the front, and its token guards the
            # repository and shared-memory APIs.
            self._pool.add(self._endpoint(self._local_server.triton_grpc_url,
                                          token=self._local_server.token))
            return True


class _IOLoop:
    """An asyncio event loop in a daemon thread, behind the futures API: one thread
    multiplexes every request in flight on grpc.aio channels, which pipelines far better
    than the synchronous stack's per-call futures."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="offload-io")
        self.thread.start()

    def submit(self, coroutine) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def close(self, endpoints: list[Endpoint]) -> None:
        async def shutdown() -> None:
            await asyncio.gather(*(e.close_aio() for e in endpoints))

        with contextlib.suppress(Exception):
            self.submit(shutdown()).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


async def pipelined(pieces: Iterator[Any],
                    send: Callable[[Any], Awaitable[dict[str, np.ndarray]]],
                    depth: int) -> dict[str, np.ndarray]:
    """The pieces of one call, at most `depth` in flight (built only when sent), results
    reassembled in order; the first error in order raises and cancels the rest. A bounded
    window keeps a huge call from flooding the server's queue or this process's memory."""
    running: collections.deque[asyncio.Future] = collections.deque()
    results = []
    try:
        for piece in pieces:
            running.append(asyncio.ensure_future(send(piece)))
            if len(running) >= depth:
                results.append(await running.popleft())
        while running:
            results.append(await running.popleft())
    except BaseException:
        for task in running:
            task.cancel()
        raise
    return tensors.concatenate(results)


async def drive(attempts: _Attempts) -> Any:
    """An _Attempts on grpc.aio channels: the coroutine behind submit() and AsyncClient."""
    while True:
        endpoint, remaining = attempts._begin()
        started = time.monotonic()
        try:
            response = await endpoint.aio_method(attempts.method)(
                attempts.request, timeout=remaining, **endpoint.call_options)
        except grpc.RpcError as error:
            await asyncio.sleep(attempts._failed(endpoint, error))
            continue
        attempts._succeeded(endpoint, started, response)
        return response


class _Attempts:
    """One request through retries and failover: `blocking()` runs it on the calling thread
    (the fast path of a synchronous call), `drive()` on an event loop."""

    def __init__(self, client: Client, method: str, request: Any, model: str | None,
                 rows: int, stats: StatsRecorder | None, deadline: float) -> None:
        self.client, self.method, self.request, self.model = client, method, request, model
        self.rows, self.stats, self.deadline = rows, stats, deadline
        self.attempt = 0
        self.failed_on: set[str] = set()
        self.last_error: grpc.RpcError | None = None
        self.last_server = ""

    # ------------------------------------------------------------ the two drivers
    def blocking(self) -> Any:
        while True:
            endpoint, remaining = self._begin()
            started = time.monotonic()
            try:
                response = endpoint.method(self.method)(
                    self.request, timeout=remaining, **endpoint.call_options)
            except grpc.RpcError as error:
                time.sleep(self._failed(endpoint, error))
                continue
            self._succeeded(endpoint, started, response)
            return response

    # ------------------------------------------------------------ shared decisions
    def _begin(self) -> tuple[Endpoint, float]:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise self._final(DeadlineExceededError(
                f"{self._what()}: no result within the deadline after {self.attempt} "
                f"attempt(s)" + (f"; last: {self._last()}" if self.last_error else ""),
                model=self.model))
        if not self.client._pool.endpoints and not self.client._start_fallback(self.model):
            raise self._final(ServerUnavailableError(
                f"{self._what()}: no server to send to, and no local fallback",
                model=self.model))
        endpoint = self.client._pool.choose(self.failed_on)
        self.last_server = endpoint.address
        endpoint.began()
        return endpoint, remaining

    def _succeeded(self, endpoint: Endpoint, started: float, response: Any) -> None:
        _succeeded(endpoint, started, response, self.stats, self.rows, self.request)

    def _failed(self, endpoint: Endpoint, error: BaseException) -> float:
        """The delay before the next attempt, or raise the error the caller gets."""
        from offload import protocol

        code = _status(error)
        details = error.details() if hasattr(error, "details") else str(error)
        if protocol.refused_credentials(code, details or ""):
            endpoint.ended(None, failed=False)
            raise self._final(protocol.translate(error, model=self.model,  # type: ignore[arg-type]
                                                 server=endpoint.address))
        busy = protocol.overloaded(code, details or "")
        missing = protocol.model_missing(code, details or "")
        unavailable = code == grpc.StatusCode.UNAVAILABLE and not busy and not missing
        # A full queue or an unloaded model is no sign of a dead server; a server that lets
        # deadlines pass (stalled, or far too slow) is, so its breaker opens after a few and
        # new requests go to the others.
        endpoint.ended(None, failed=unavailable or code == grpc.StatusCode.DEADLINE_EXCEEDED)
        self.last_error = error if isinstance(error, grpc.RpcError) else None
        if missing:
            # This server lacks the model (e.g. mid-update): another one may have it. Each
            # server is asked once; then the caller gets ModelNotFoundError.
            self.failed_on.add(endpoint.address)
            if any(e.address not in self.failed_on for e in self.client._pool.endpoints):
                return 0.0
        if busy:
            self.failed_on.add(endpoint.address)  # another server, if there is one
        if unavailable:
            self.failed_on.add(endpoint.address)
            everywhere = self.failed_on >= {e.address for e in self.client._pool.endpoints}
            if everywhere and self.client._start_fallback(self.model):
                # The new local endpoint is the only one not in failed_on: try it at once,
                # without counting this against the retries.
                return 0.0
        if (unavailable or busy) and self.attempt < self.client.retries:
            self.attempt += 1
            if self.stats is not None:
                self.stats.retry()
            delay = min(self.client.backoff.delay(self.attempt - 1),
                        max(0.0, self.deadline - time.monotonic()))
            log.info("%s: %s from %s, retry %d in %.3f s", self._what(),
                     code.name if code else "error", endpoint.address, self.attempt, delay)
            return delay
        if isinstance(error, grpc.RpcError):
            raise self._final(protocol.translate(error, model=self.model,
                                                 server=endpoint.address))
        raise self._final(ServerUnavailableError(f"{endpoint.address}: {error}",
                                                 model=self.model))

    def _final(self, error: InferenceError) -> InferenceError:
        if self.stats is not None:
            self.stats.failure()
        return error

    def _what(self) -> str:
        return f"model '{self.model}'" if self.model else self.method

    def _last(self) -> str:
        error = self.last_error
        code = _status(error)
        details = error.details() if hasattr(error, "details") else str(error)
        return f"{code.name if code else 'error'} from {self.last_server}: {details}"


def _succeeded(endpoint: Endpoint, started: float, response: Any,
               stats: StatsRecorder | None, rows: int, request: Any) -> None:
    seconds = time.monotonic() - started
    endpoint.ended(seconds, failed=False)
    if stats is not None:
        stats.request(seconds, rows, _size(request), _size(response))


def _on_this_host(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1") or address.startswith("unix:")


def _size(message: Any) -> int:
    # Inference travels as bytes; ByteSize() of a message would serialise it again.
    return len(message) if isinstance(message, bytes) else message.ByteSize()


def _status(error: BaseException | None) -> grpc.StatusCode | None:
    """The status code of a failed call, sync (grpc.Call) or asyncio (AioRpcError)."""
    code = getattr(error, "code", None)
    return code() if callable(code) else None


class Model:
    """A model on the client's servers. Thread-safe; obtain with :meth:`Client.model`."""

    def __init__(self, client: Client, info: ModelInfo, version: str) -> None:
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
        return f"<offload.Model {self.name} ({shown}) max_batch_size={self.max_batch_size}>"

    def infer(self, inputs: Mapping[str, Any] | None = None, /, *,
              timeout: float | None = None, version: str | int | None = None,
              **named: Any) -> dict[str, np.ndarray]:
        """Run the model on a batch; returns {output name: array}. Batches larger than
        max_batch_size are split, sent pipelined and reassembled in order. Numeric outputs
        are read-only views of the response (`.copy()` to modify)."""
        target = self._for_version(version)
        prepared = self._prepare(target, named if inputs is None else {**inputs, **named})
        if self._client._regions is not None:
            return tensors.concatenate([
                self._through_shared_memory(target, piece, timeout)
                for piece in tensors.split(prepared, target.info.max_batch_size)])
        if prepared.batch is not None and prepared.batch > target.info.max_batch_size > 0:
            return self._submit_prepared(target, prepared, timeout).result()
        request = tensors.build_request(_pb(), target.info, prepared, target.version)
        # One request: run it on this thread, without a future's hand-offs.
        response = self._client._call("ModelInfer", request, model=self.name, timeout=timeout,
                                      rows=prepared.batch or 1, stats=self._stats)
        return tensors.decode_response(_pb(), response, target.info)

    def submit(self, inputs: Mapping[str, Any] | None = None, /, *,
               timeout: float | None = None, version: str | int | None = None,
               **named: Any) -> concurrent.futures.Future:
        """Like :meth:`infer`, returning a concurrent.futures.Future at once. Input errors
        raise here, before anything is sent."""
        target = self._for_version(version)
        return self._submit_prepared(target, self._prepare(target, {**(inputs or {}), **named}),
                                     timeout)

    def _through_shared_memory(self, target: Model, piece: tensors.Prepared,
                               timeout: float | None) -> dict[str, np.ndarray]:
        from offload import shm

        client = self._client
        deadline = time.monotonic() + (timeout or client.timeout)
        where = shm.layout(target.info, piece)
        region = client._regions.acquire(where.nbytes)
        try:
            shm.write_inputs(region, target.info, piece, where)
            request = shm.build_request(_pb(), target.info, piece, target.version, region,
                                        where)
            try:
                response = client._call("ModelInfer", request, model=self.name,
                                        timeout=timeout, rows=piece.batch or 1,
                                        stats=self._stats)
            except SharedMemoryError:
                # The server lost the region (it restarted, or someone unregistered it):
                # register it again and send once more; a refusal raises its own error.
                client._regions.reregister(region)
                response = client._call("ModelInfer", request, model=self.name,
                                        timeout=max(deadline - time.monotonic(), 1e-3),
                                        rows=piece.batch or 1, stats=self._stats)
            return shm.read_outputs(_pb(), response, region, where, target.info)
        finally:
            client._regions.release(region)

    def _submit_prepared(self, target: Model, prepared: tensors.Prepared,
                         timeout: float | None) -> concurrent.futures.Future:
        if self._client._regions is not None:
            # Shared memory: each piece synchronously, on the client's I/O thread pool.
            pieces = tensors.split(prepared, target.info.max_batch_size)
            return self._client._workers().submit(lambda: tensors.concatenate(
                [self._through_shared_memory(target, p, timeout) for p in pieces]))
        tensors.check_piece_size(target.info, prepared)
        client = self._client
        deadline = time.monotonic() + (timeout or client.timeout)

        async def send(piece: tensors.Prepared) -> dict[str, np.ndarray]:
            request = tensors.build_request(_pb(), target.info, piece, target.version)
            response = await drive(_Attempts(client, "ModelInfer", request, self.name,
                                             piece.batch or 1, self._stats, deadline))
            return tensors.decode_response(_pb(), response, target.info)

        pieces = tensors.pieces(prepared, target.info.max_batch_size)
        return client._io().submit(pipelined(pieces, send, client.pipeline))

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
                results.append(window.popleft().result())
        results += [future.result() for future in window]
        return results

    def stats(self) -> ClientStats:
        """This client's counters and latency percentiles for the model."""
        return self._stats.snapshot()

    def server_stats(self) -> list[ServerStats]:
        """Triton's statistics for the model (from the server the request lands on)."""
        request = _pb().ModelStatisticsRequest(name=self.name, version=self.version)
        return server_stats(self._client._call("ModelStatistics", request, model=self.name))

    def _prepare(self, target: Model, arrays: dict[str, Any]) -> tensors.Prepared:
        self._stats.call()
        try:
            return tensors.prepare(target.info, arrays, check_finite=self._client.check_finite)
        except InferenceError:
            self._stats.failure()
            raise

    def _for_version(self, version: str | int | None) -> Model:
        if version is None or str(version) == self.version:
            return self
        return self._client.model(self.name, version)


def _pb():
    global _SERVICE_PB2
    if _SERVICE_PB2 is None:
        from offload import protocol

        _SERVICE_PB2 = protocol.service_pb2
    return _SERVICE_PB2


_SERVICE_PB2 = None
