"""Servers as the client sees them: a gRPC channel each, load, latency, and a circuit
breaker; and the choice of the server for the next request."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from offload.slots import Slots

#: Environment variable with a comma-separated list of servers, used when none are given.
SERVERS_VARIABLE = "OFFLOAD_SERVERS"


@dataclass(frozen=True)
class TLS:
    """TLS for gRPC: the CA bundle that signed the server's certificate (None: system
    roots), and optionally a client certificate and key (PEM bytes or file paths)."""

    root_certificates: bytes | str | None = None
    certificate_chain: bytes | str | None = None
    private_key: bytes | str | None = None
    server_name: str | None = None  # override the name checked against the certificate

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(_pem(self.root_certificates),
                                            _pem(self.private_key),
                                            _pem(self.certificate_chain))


def _pem(value: bytes | str | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    with Path(value).open("rb") as handle:
        return handle.read()


#: Triton's gRPC port, taken when an address names none.
DEFAULT_PORT = 8001


def parse_servers(servers: str | Sequence[str] | None) -> list[str]:
    """Addresses as gRPC takes them: a list, or a comma-separated string (default: the
    OFFLOAD_SERVERS variable); port 8001 where none is given; de-duplicated, in order."""
    if servers is None:
        servers = os.environ.get(SERVERS_VARIABLE, "")
    if isinstance(servers, str):
        servers = [s for s in (part.strip() for part in servers.split(",")) if s]
    return list(dict.fromkeys(with_port(s.strip()) for s in servers))


def with_port(address: str) -> str:
    """'host' -> 'host:8001', '[::1]' or '::1' -> '[::1]:8001'; addresses with a port,
    'unix:' paths and gRPC URIs ('dns:///…', 'ipv4:…') as they are."""
    if ":" not in address:
        return f"{address}:{DEFAULT_PORT}"
    if address.startswith("["):
        return address if "]:" in address else f"{address}:{DEFAULT_PORT}"
    scheme = address.split(":", 1)[0]
    if scheme in ("unix", "unix-abstract", "dns", "ipv4", "ipv6", "vsock"):
        return address
    if address.count(":") > 1:  # a bare IPv6 address
        return f"[{address}]:{DEFAULT_PORT}"
    return address


@dataclass
class CircuitBreaker:
    """Open after `threshold` consecutive failures: the server is skipped for `cooldown`
    seconds (doubling on each re-open, at most `max_cooldown`), then tried again."""

    threshold: int = 3
    cooldown: float = 2.0
    max_cooldown: float = 30.0
    failures: int = 0
    open_until: float = 0.0
    _current: float = field(default=0.0, repr=False)

    def closed(self, now: float) -> bool:
        return now >= self.open_until

    def success(self) -> None:
        self.failures = 0
        self._current = 0.0

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            self._current = min(self.max_cooldown, (self._current * 2) or self.cooldown)
            self.open_until = now + self._current


class Endpoint:
    """One server: its channel, outstanding requests, observed latency, breaker."""

    def __init__(self, address: str, *, tls: TLS | None, options: list[tuple[str, object]],
                 max_in_flight: int = 64) -> None:
        self.address = address
        self.slots = Slots(max_in_flight)
        if tls is not None:
            if tls.server_name:
                options = [*options, ("grpc.ssl_target_name_override", tls.server_name)]
            self.channel = grpc.secure_channel(address, tls.credentials(), options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self._tls, self._options = tls, options
        #: keyword arguments of every call to this server (metadata, compression)
        self.call_options: dict[str, object] = {}
        self._init_state()

    def _init_state(self) -> None:
        self.outstanding = 0
        self.latency = 0.0  # exponentially weighted, seconds; 0 until measured
        self.breaker = CircuitBreaker()
        self._lock = threading.Lock()
        self._methods: dict[str, grpc.UnaryUnaryMultiCallable] = {}
        self._aio_channel: grpc.aio.Channel | None = None
        self._aio_methods: dict[str, object] = {}

    def method(self, name: str):
        if name not in self._methods:
            from offload import protocol

            self._methods[name] = protocol.method(self.channel, name)
        return self._methods[name]

    def aio_method(self, name: str):
        """The same RPC on a grpc.aio channel; call only from the client's event loop, where
        the channel is created on first use."""
        if name not in self._aio_methods:
            from offload import protocol

            if self._aio_channel is None:
                tls = self._tls
                if tls is not None:
                    options = self._options + ([("grpc.ssl_target_name_override",
                                                 tls.server_name)] if tls.server_name else [])
                    self._aio_channel = grpc.aio.secure_channel(self.address, tls.credentials(),
                                                                options=options)
                else:
                    self._aio_channel = grpc.aio.insecure_channel(self.address,
                                                                  options=self._options)
            self._aio_methods[name] = protocol.method(self._aio_channel, name)
        return self._aio_methods[name]

    async def close_aio(self) -> None:
        if self._aio_channel is not None:
            await self._aio_channel.close()

    def began(self) -> None:
        with self._lock:
            self.outstanding += 1

    def ended(self, seconds: float | None, failed: bool) -> None:
        with self._lock:
            self.outstanding -= 1
            if failed:
                self.breaker.failure(time.monotonic())
            else:
                self.breaker.success()
                if seconds is not None:
                    self.latency = seconds if not self.latency else (
                        0.8 * self.latency + 0.2 * seconds)

    def record_probe(self, ready: bool) -> None:
        with self._lock:
            if ready:
                self.breaker.success()
                self.breaker.open_until = 0.0
            else:
                self.breaker.failure(time.monotonic())

    def cost(self) -> float:
        """Expected wait for one more request: queue length times typical latency."""
        return (self.outstanding + 1) * (self.latency or 1e-3)

    def close(self) -> None:
        self.channel.close()


class EndpointPool:
    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.endpoints = endpoints
        self._lock = threading.Lock()

    def add(self, endpoint: Endpoint) -> None:
        with self._lock:
            self.endpoints.append(endpoint)

    def choose(self, avoid: set[str] = frozenset()) -> Endpoint:  # type: ignore[assignment]
        """The server with the least expected wait among those whose breaker is closed,
        preferring ones not in `avoid` (servers that just failed this request). With every
        breaker open, the one that reopens first: a request is never refused locally."""
        if len(self.endpoints) == 1:  # the common case: nothing to choose
            return self.endpoints[0]
        now = time.monotonic()
        with self._lock:
            candidates = [e for e in self.endpoints if e.breaker.closed(now)]
            fresh = [e for e in candidates if e.address not in avoid]
            pool = fresh or candidates
            if not pool:
                return min(self.endpoints, key=lambda e: e.breaker.open_until)
            best = min(e.cost() for e in pool)
            # Ties (e.g. all idle and unmeasured) are broken at random to spread load.
            return random.choice([e for e in pool if e.cost() <= best * 1.05])

    def close(self) -> None:
        for endpoint in self.endpoints:
            endpoint.close()


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base·2^n))."""

    base: float = 0.05
    cap: float = 2.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.base * 2**attempt))
