"""The request engine under :class:`offload.Client` and :class:`offload.AsyncClient`.

One implementation of what happens to a request between a model and the servers — the
deadline, the choice of server, the bound on requests in flight per server, retries with
backoff, failover, the circuit breaker, the local fallback — with three ways in: a blocking
call (:meth:`Engine.call`), a coroutine on the caller's event loop (:meth:`Engine.acall`),
and a concurrent future (:meth:`Engine.spawn`, on the engine's own I/O loop).

The engine owns everything with a lifetime: gRPC channels, the I/O loop's thread, a thread
pool, a fallback server. `close()` frees them, and so does garbage collection of a client
that was never closed. After `fork()`, the child's engine builds new channels on first use
and leaves the parent's alone (the parent keeps using them); see :func:`_forked`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from offload import protocol
from offload.endpoints import TLS, Backoff, Endpoint, EndpointPool
from offload.errors import (
    ClientClosedError,
    DeadlineExceededError,
    InferenceError,
    ModelNotFoundError,
    OffloadError,
    ServerUnavailableError,
)
from offload.stats import StatsRecorder
from offload.tokens import TOKEN_HEADER

log = logging.getLogger("offload")

COMPRESSION = {None: None, "none": None, "gzip": grpc.Compression.Gzip,
               "deflate": grpc.Compression.Deflate}

#: gRPC's reconnection backoff: by default a channel that lost its server waits 1 s, then
#: longer and longer (×1.6, up to 120 s) between attempts, so a job's client saw a restarted
#: server only 12–30 s after its return; here at most 1 s passes between attempts. (Each
#: attempt may still take gRPC's default 20 s to connect: a slow network is no outage.)
RECONNECT = [("grpc.initial_reconnect_backoff_ms", 100),
             ("grpc.max_reconnect_backoff_ms", 1000)]


@dataclass(frozen=True)
class EngineOptions:
    """How requests are sent: everything a client was configured with but the servers."""

    timeout: float = 60.0
    retries: int = 4
    backoff: Backoff = field(default_factory=Backoff)
    tls: TLS | None = None
    compression: str | None = None
    keepalive: float | None = None
    token: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    max_in_flight: int = 64
    fallback: str | None = None
    repository: str = "model_repository"


# ---------------------------------------------------------------- fork handling
# Bumped in a child after fork(): engines compare it on each call (cheaper than getpid()).
_generation = 0
# Whether this process started gRPC's asyncio integration, and whether an ancestor did: it
# cannot run again in a forked child (gRPC aborts: "next_worker->state == KICKED").
_aio_used = False
_aio_forbidden = False
# What children inherited: kept referenced, never closed, so that no destructor of the
# parent's channels, loops or threads runs in the child (a gRPC channel closing there could
# write to the connection the parent still uses).
_inherited: list[object] = []


class _ForkGate:
    """Fork waits until no request of this process is inside gRPC (for at most 10 s), and
    requests wait while it forks: gRPC then resets its state in the child, which it skips
    when a thread is in a call ("Other threads are currently calling into gRPC")."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._active = 0
        self._forking = False

    def enter(self) -> None:
        with self._condition:
            while self._forking:
                self._condition.wait()
            self._active += 1

    def exit(self) -> None:
        with self._condition:
            self._active -= 1
            if not self._active:
                self._condition.notify_all()

    def before_fork(self) -> None:
        self._condition.acquire()
        self._forking = True
        deadline = time.monotonic() + 10
        while self._active and (left := deadline - time.monotonic()) > 0:
            self._condition.wait(left)

    def after_fork_in_parent(self) -> None:
        self._forking = False
        self._condition.notify_all()
        self._condition.release()

    def after_fork_in_child(self) -> None:
        # The child has none of the parent's threads: nothing is in a call here.
        global _generation, _aio_forbidden
        self.__init__()  # type: ignore[misc]
        _generation += 1
        _aio_forbidden = _aio_forbidden or _aio_used


_gate = _ForkGate()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_gate.before_fork, after_in_parent=_gate.after_fork_in_parent,
                        after_in_child=_gate.after_fork_in_child)


def aio_usable() -> bool:
    """Whether gRPC's asyncio integration can run in this process."""
    return not _aio_forbidden


def _mark_aio_used() -> None:
    global _aio_used
    _aio_used = True


# ---------------------------------------------------------------- the engine
class Engine:
    """Servers and the machinery of a client; see the module's docstring."""

    def __init__(self, addresses: Sequence[str], options: EngineOptions) -> None:
        if options.compression not in COMPRESSION:
            raise ValueError(f"compression must be one of gzip, deflate or None, "
                             f"got {options.compression!r}")
        if options.fallback not in (None, "local"):
            raise ValueError(f"fallback must be None or 'local', got {options.fallback!r}")
        if options.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {options.max_in_flight}")
        self.options = options
        self.addresses = list(addresses)
        self.channel_options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1),
            # Servers' error messages can be long (a model's traceback): take them whole.
            ("grpc.max_metadata_size", 1 << 20), *RECONNECT]
        if options.keepalive:
            self.channel_options += [("grpc.keepalive_time_ms", int(options.keepalive * 1000)),
                                     ("grpc.keepalive_timeout_ms", 20_000)]
        self.call_options = self.options_for(options.token)
        self._lock = threading.Lock()
        self._closed = False
        self._build()

    def _build(self) -> None:
        """Everything tied to this process: channels, loop, threads (lazily)."""
        self._generation = _generation
        self.pool = EndpointPool([self.endpoint(a) for a in self.addresses])
        self._io: _IOLoop | None = None
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        self.local_server: Any = None
        self._owns_local_server = False
        self._fallback_models: set[str] = set()

    # ------------------------------------------------------------ configuration
    def endpoint(self, address: str, token: str | None = None) -> Endpoint:
        """A server; `token` replaces the client's own for it (a fallback server's)."""
        endpoint = Endpoint(address, tls=self.options.tls, options=self.channel_options,
                            max_in_flight=self.options.max_in_flight)
        endpoint.call_options = self.call_options if token is None else \
            self.options_for(token)
        return endpoint

    def options_for(self, token: str | None) -> dict[str, Any]:
        """The keyword arguments of every call: headers, the token, compression; only
        those in use (each keyword costs gRPC a few µs per call)."""
        metadata = dict(self.options.headers)
        if token:
            metadata["authorization"] = f"Bearer {token}"
            metadata.setdefault(TOKEN_HEADER, token)
        pairs = tuple((k.lower(), v) for k, v in metadata.items()) or None
        compression = COMPRESSION[self.options.compression]
        return {key: value for key, value in (("metadata", pairs), ("compression", compression))
                if value is not None}

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------ lifecycle
    def check(self) -> None:
        """Raise if closed; after a fork, start over with this process's own resources."""
        if self._closed:
            raise ClientClosedError("this client is closed; create a new one")
        if self._generation != _generation:
            self._forked()

    def _forked(self) -> None:
        """First use in a forked child: the parent's channels, I/O loop and threads are not
        ours (the threads do not even exist here). Keep them referenced and untouched, and
        build new ones; a fallback server stays the parent's, used but not owned."""
        with self._lock:
            if self._generation == _generation:
                return
            _inherited.append((self.pool, self._io, self._threads))
            server, fallback_endpoint = self.local_server, None
            if server is not None:
                fallback_endpoint = self.pool.endpoints[-1]
            self._lock = threading.Lock()
            self._build()
            if server is not None and fallback_endpoint is not None:
                self.local_server = server  # the parent's: reachable, never stopped here
                self.pool.add(self.endpoint(fallback_endpoint.address, server.token))
            log.debug("offload: new channels after fork (pid %d)", os.getpid())

    def close(self) -> None:
        """Free channels, threads and a fallback server this process started. Idempotent;
        also the finalizer of a client dropped without close()."""
        if self._closed:
            return
        self._closed = True
        if self._generation != _generation:  # a forked child: nothing here is ours
            return
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        if self._io is not None:
            self._io.close(self.pool.endpoints)
        self.pool.close()
        if self.local_server is not None and self._owns_local_server:
            self.local_server.stop()

    # ------------------------------------------------------------ the three ways in
    def call(self, method: str, request: Any, *, model: str | None,
             timeout: float | None = None, rows: int = 0,
             stats: StatsRecorder | None = None) -> Any:
        """One request, blocking, with retries and failover. The first attempt runs
        inline; an _Attempt takes over only if it fails: a call that succeeds at once
        (nearly all) pays for nothing else (perf/RESULTS.md)."""
        if self._generation != _generation or self._closed:
            self.check()
        started = time.monotonic()
        deadline = started + (timeout or self.options.timeout)
        endpoints = self.pool.endpoints
        if not endpoints or deadline <= started:
            return self._blocking(_Attempt(self, method, request, model, rows, stats,
                                           deadline))
        endpoint = endpoints[0] if len(endpoints) == 1 else self.pool.choose()
        if not endpoint.slots.try_acquire():
            return self._blocking(_Attempt(self, method, request, model, rows, stats,
                                           deadline))
        endpoint.began()
        _gate.enter()
        try:
            response = endpoint.method(method)(request, timeout=deadline - started,
                                               **endpoint.call_options)
        except grpc.RpcError as error:
            attempt = _Attempt(self, method, request, model, rows, stats, deadline)
            attempt.server = endpoint.address
            delay = attempt.failed(endpoint, error)
            time.sleep(delay)
            return self._blocking(attempt)
        finally:
            _gate.exit()
            endpoint.slots.release()
        _succeeded(endpoint, started, response, stats, rows, request)
        return response

    def _blocking(self, attempt: _Attempt) -> Any:
        while True:
            endpoint, remaining = attempt.begin()
            if not endpoint.slots.acquire(remaining):
                endpoint.ended(None, failed=False)
                attempt.no_slot(endpoint)
                continue
            started = time.monotonic()
            _gate.enter()
            try:
                response = endpoint.method(attempt.method)(
                    attempt.request, timeout=max(attempt.deadline - started, 1e-3),
                    **endpoint.call_options)
            except grpc.RpcError as error:
                delay = attempt.failed(endpoint, error)
            else:
                attempt.succeeded(endpoint, started, response)
                return response
            finally:
                _gate.exit()
                endpoint.slots.release()
            time.sleep(delay)

    async def acall(self, method: str, request: Any, *, model: str | None,
                    timeout: float | None = None, deadline: float | None = None,
                    rows: int = 0, stats: StatsRecorder | None = None) -> Any:
        """One request on the running event loop, with retries and failover (`deadline`,
        a time.monotonic() value, wins over `timeout`: the pieces of one call share it)."""
        if self._generation != _generation or self._closed:
            self.check()
        if _aio_forbidden:
            raise OffloadError(
                "gRPC's asyncio support cannot run in a process forked from one that used "
                "it (gRPC aborts); start this process with the 'spawn' method, or use the "
                "synchronous Client here")
        if not _aio_used:
            _mark_aio_used()
        if deadline is None:
            deadline = time.monotonic() + (timeout or self.options.timeout)
        attempt = _Attempt(self, method, request, model, rows, stats, deadline)
        while True:
            endpoint, remaining = attempt.begin()
            if not endpoint.slots.try_acquire() and \
                    not await endpoint.slots.acquire_async(remaining):
                endpoint.ended(None, failed=False)
                attempt.no_slot(endpoint)
                continue
            started = time.monotonic()
            _gate.enter()
            try:
                response = await endpoint.aio_method(attempt.method)(
                    attempt.request, timeout=max(deadline - started, 1e-3),
                    **endpoint.call_options)
            except grpc.RpcError as error:
                delay = attempt.failed(endpoint, error)
            else:
                attempt.succeeded(endpoint, started, response)
                return response
            finally:
                _gate.exit()
                endpoint.slots.release()
            await asyncio.sleep(delay)

    def spawn(self, coroutine: Callable[[], Coroutine[Any, Any, Any]],
              blocking: Callable[[], Any]) -> concurrent.futures.Future:
        """A concurrent future of `coroutine()` on the engine's I/O loop, where many
        requests share one thread; where gRPC's asyncio support cannot run (a forked
        child of a process that used it), of `blocking()` on a thread pool instead."""
        self.check()
        if aio_usable():
            return self._loop().submit(coroutine())
        return self._pool_of_threads().submit(blocking)

    # ------------------------------------------------------------ health
    def health(self, timeout: float) -> dict[str, bool]:
        """Ask every server whether it is ready, waiting for a connection up to `timeout`
        (so that a server just back is seen, not the channel's last failure); a ready one
        closes its circuit breaker, another counts as a failure."""
        self.check()
        status = {}
        for endpoint in list(self.pool.endpoints):
            try:
                ready = endpoint.method("ServerReady")(
                    protocol.service_pb2.ServerReadyRequest(), timeout=timeout,
                    wait_for_ready=True,
                    metadata=endpoint.call_options.get("metadata")).ready
            except grpc.RpcError:
                ready = False
            endpoint.record_probe(ready)
            status[endpoint.address] = ready
        return status

    async def ahealth(self, timeout: float) -> dict[str, bool]:
        self.check()
        _mark_aio_used()

        async def probe(endpoint: Endpoint) -> bool:
            try:
                response = await endpoint.aio_method("ServerReady")(
                    protocol.service_pb2.ServerReadyRequest(), timeout=timeout,
                    wait_for_ready=True, metadata=endpoint.call_options.get("metadata"))
            except grpc.RpcError:
                return False
            return bool(response.ready)

        endpoints = list(self.pool.endpoints)
        answers = await asyncio.gather(*(probe(e) for e in endpoints))
        for endpoint, ready in zip(endpoints, answers, strict=True):
            endpoint.record_probe(ready)
        return {e.address: ready for e, ready in zip(endpoints, answers, strict=True)}

    # ------------------------------------------------------------ internals
    def _loop(self) -> _IOLoop:
        with self._lock:
            if self._io is None:
                _mark_aio_used()
                self._io = _IOLoop()
            return self._io

    def _pool_of_threads(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._threads is None:
                self._threads = concurrent.futures.ThreadPoolExecutor(
                    max(4, self.options.max_in_flight // 4), thread_name_prefix="offload")
            return self._threads

    def want_model(self, name: str | None) -> None:
        """A model the fallback server should load if it has to start."""
        if name:
            self._fallback_models.add(name)

    def start_fallback(self, model: str | None) -> bool:
        """Start the embedded server once; True if it runs (a new endpoint)."""
        if self.options.fallback != "local":
            return False
        with self._lock:
            if self.local_server is not None:
                return True
            try:
                from offload_server import LocalServer
            except ImportError:
                log.error("fallback='local' needs the server side: pip install 'offload[server]'")
                return False
            log.warning("no server reachable: starting a local one with %s",
                        self.options.repository)
            models = sorted(self._fallback_models | ({model} if model else set()))
            try:
                # With this client's token, if it has one; else the server generates one
                # for its restricted APIs, and this client is the one that holds it.
                server = LocalServer(self.options.repository, models=models or None,
                                     token=self.options.token).start()
            except OffloadError as error:
                log.error("local fallback server failed to start: %s", error)
                return False
            self.local_server, self._owns_local_server = server, True
            # Its owner talks to Triton's private socket (this user's alone): no front in
            # the way; other local users reach only the front, and its token guards the
            # repository and shared-memory APIs.
            self.pool.add(self.endpoint(server.triton_grpc_url, token=server.token))
            return True


class _IOLoop:
    """An asyncio event loop in a daemon thread, behind the futures API: one thread
    multiplexes every request in flight on grpc.aio channels, which pipelines better than
    the synchronous stack's per-call futures at low depth (perf/RESULTS.md)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="offload-io")
        self.thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def close(self, endpoints: list[Endpoint]) -> None:
        async def shutdown() -> None:
            await asyncio.gather(*(e.close_aio() for e in endpoints))

        if threading.current_thread() is self.thread:  # (a finalizer run on the loop)
            self.loop.call_soon(self.loop.stop)
            return
        with contextlib.suppress(Exception):
            self.submit(shutdown()).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            self.loop.close()


# ---------------------------------------------------------------- one request's attempts
class _Attempt:
    """One request through retries and failover: every decision about a failure, shared
    by the blocking and the asyncio drivers."""

    __slots__ = ("attempt", "deadline", "engine", "failed_on", "last_error", "method", "model",
                 "reloading", "request", "rows", "server", "stats", "waited")

    def __init__(self, engine: Engine, method: str, request: Any, model: str | None,
                 rows: int, stats: StatsRecorder | None, deadline: float) -> None:
        self.engine, self.method, self.request, self.model = engine, method, request, model
        self.rows, self.stats, self.deadline = rows, stats, deadline
        self.attempt = 0
        self.failed_on: set[str] = set()
        self.last_error: grpc.RpcError | None = None
        self.server = ""
        self.waited = False  # for a slot: the servers were busy, not failing
        self.reloading = False  # the last answer: the model had no version serving

    def begin(self) -> tuple[Endpoint, float]:
        remaining = self.deadline - time.monotonic()
        engine = self.engine
        if remaining <= 0:
            if self.reloading:
                raise self._no_version_until_deadline()
            if self.waited and self.last_error is None:
                raise self._final(DeadlineExceededError(
                    f"{self._what()}: no result within the deadline: the requests already "
                    f"in flight to {self.server} (max_in_flight="
                    f"{engine.options.max_in_flight}) took it all; raise timeout= or "
                    "max_in_flight=, or add servers", model=self.model))
            raise self._final(DeadlineExceededError(
                f"{self._what()}: no result within the deadline after {self.attempt} "
                f"attempt(s)" + (f"; last: {self._last()}" if self.last_error else ""),
                model=self.model))
        if not engine.pool.endpoints and not engine.start_fallback(self.model):
            raise self._final(ServerUnavailableError(
                f"{self._what()}: no server to send to, and no local fallback",
                model=self.model))
        endpoint = engine.pool.choose(self.failed_on)
        self.server = endpoint.address
        endpoint.began()
        return endpoint, remaining

    def no_slot(self, endpoint: Endpoint) -> None:
        """The deadline passed while waiting for a free slot on a busy server."""
        self.waited = True
        self.server = endpoint.address

    def succeeded(self, endpoint: Endpoint, started: float, response: Any) -> None:
        _succeeded(endpoint, started, response, self.stats, self.rows, self.request)

    def failed(self, endpoint: Endpoint, error: BaseException) -> float:
        """The delay before the next attempt, or raise the error the caller gets."""
        code = _status(error)
        details = (error.details() if hasattr(error, "details") else str(error)) or ""
        engine = self.engine
        if protocol.refused_credentials(code, details):
            endpoint.ended(None, failed=False)
            raise self._final(protocol.translate(error, model=self.model,
                                                 server=endpoint.address))
        busy = protocol.overloaded(code, details)
        reloading = self.reloading = protocol.model_reloading(code, details)
        missing = protocol.model_missing(code, details) and not reloading
        unavailable = (code == grpc.StatusCode.UNAVAILABLE and not busy and not missing
                       and not reloading)
        # A full queue or a model being reloaded is no sign of a dead server; a server that
        # lets deadlines pass (stalled, or far too slow) is, so its breaker opens after a
        # few and new requests go to the others.
        endpoint.ended(None, failed=unavailable or code == grpc.StatusCode.DEADLINE_EXCEEDED)
        self.last_error = error if isinstance(error, grpc.RpcError) else None
        others = [e for e in engine.pool.endpoints if e.address not in self.failed_on
                  and e.address != endpoint.address]
        if missing:
            # This server lacks the model (e.g. mid-update): another one may have it. Each
            # server is asked once; then the caller gets ModelNotFoundError.
            self.failed_on.add(endpoint.address)
            if others:
                return 0.0
        if busy or reloading or unavailable:
            self.failed_on.add(endpoint.address)  # another server first, if there is one
        if unavailable:
            everywhere = self.failed_on >= {e.address for e in engine.pool.endpoints}
            if everywhere and engine.start_fallback(self.model):
                # The new local endpoint is the only one not in failed_on: try it at once,
                # without counting this against the retries.
                return 0.0
        if reloading and time.monotonic() >= self.deadline:
            raise self._no_version_until_deadline()  # the answer came at the deadline
        if reloading:
            # Transient within the deadline (a drain or a reload): wait, on another server
            # if there is one; not counted against the retries.
            if self.stats is not None:
                self.stats.retry()
            if others:
                return 0.0
            self.failed_on.discard(endpoint.address)
            return min(engine.options.backoff.delay(min(self.attempt, 5)) + 0.01,
                       max(0.0, self.deadline - time.monotonic()))
        if (unavailable or busy) and self.attempt < engine.options.retries:
            self.attempt += 1
            if self.stats is not None:
                self.stats.retry()
            delay = min(engine.options.backoff.delay(self.attempt - 1),
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

    def _no_version_until_deadline(self) -> InferenceError:
        return self._final(ModelNotFoundError(
            f"{self._what()} had no version serving until the deadline (unloaded, or "
            f"loading for longer than the call's timeout); last: {self._last()}",
            model=self.model))

    def _what(self) -> str:
        return f"model '{self.model}'" if self.model else self.method

    def _last(self) -> str:
        error = self.last_error
        code = _status(error)
        details = error.details() if error is not None else ""
        return f"{code.name if code else 'error'} from {self.server}: {details}"


def _succeeded(endpoint: Endpoint, started: float, response: Any,
               stats: StatsRecorder | None, rows: int, request: Any) -> None:
    seconds = time.monotonic() - started
    endpoint.ended(seconds, failed=False)
    if stats is not None:
        stats.request(seconds, rows, _size(request), _size(response))


def _size(message: Any) -> int:
    # Inference travels as bytes; ByteSize() of a message would serialise it again.
    return len(message) if isinstance(message, bytes) else message.ByteSize()


def _status(error: BaseException | None) -> grpc.StatusCode | None:
    """The status code of a failed call, sync (grpc.Call) or asyncio (AioRpcError)."""
    code = getattr(error, "code", None)
    return code() if callable(code) else None
