"""The front process: ``python -m offload_server.front`` reads its configuration as one
JSON object on stdin (secrets never appear on a command line), binds its listeners,
answers one JSON line on stdout with the ports it bound (or the error), and relays until
Triton exits or it gets SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
import sys
import threading
from pathlib import Path
from typing import Any

from offload_server.front import janitor
from offload_server.front.grpc_relay import Admission, RelayConfig, protocol_factory
from offload_server.front.http_front import HTTPFrontConfig, serve_http
from offload_server.front.policy import AccessPolicy

log = logging.getLogger("offload_server.front")


def tls_context(tls: dict[str, str] | None, alpn: list[str]) -> ssl.SSLContext | None:
    if not tls:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls["certificate"], tls["private_key"])
    if tls.get("client_ca"):
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(tls["client_ca"])
    context.set_alpn_protocols(alpn)
    return context


def triton_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def watch_parent(parent_pid: int) -> bool:
    """Ask Linux for SIGTERM when the process that started us dies; False if it is gone
    already."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    return os.getppid() == parent_pid


def stop_triton(pid: int) -> None:
    """The server's owner is gone or asked us to stop: Triton and its stubs go too."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def serve(config: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    pid = int(config["triton_pid"])
    if config.get("parent_pid") and not watch_parent(int(config["parent_pid"])):
        stop_triton(pid)
        return
    policy = AccessPolicy(config["token"], config["user_token"])
    limit = int(config["max_request_bytes"])
    sockets = config["upstream"]
    listeners: dict[str, int] = {}
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        grpc_host, grpc_port = config["grpc"]
        relay = RelayConfig(sockets["grpc"], policy, limit,
                            Admission(int(config.get("max_in_flight", 512))))
        server = await loop.create_server(
            protocol_factory(relay), grpc_host, grpc_port, reuse_address=True,
            ssl=tls_context(config.get("tls"), ["h2"]))
        listeners["grpc"] = server.sockets[0].getsockname()[1]
        http_servers = []
        for kind, upstream in (("http", sockets["http"]), ("metrics", sockets["metrics"])):
            if config.get(kind) is None:
                continue
            host, port = config[kind]
            front = HTTPFrontConfig(upstream, policy, limit, metrics_only=kind == "metrics")
            listeners[kind], running = serve_http(
                host, port, front, tls_context(config.get("tls"), ["http/1.1"]))
            http_servers.append(running)
    except OSError as error:
        failed = next(k for k in ("grpc", "http", "metrics") if k not in listeners)
        _answer({"error": str(error.strerror or error), "listener": failed,
                 "errno": error.errno})
        return
    stop_janitor = threading.Event()
    threading.Thread(target=janitor.run, daemon=True, name="front-janitor",
                     args=(sockets["grpc"], float(config.get("janitor_interval", 10)),
                           stop_janitor)).start()
    _answer({"ports": listeners})
    triton_exited = asyncio.Event()
    with contextlib.suppress(OSError):  # Linux ≥ 5.3: told the moment Triton exits
        loop.add_reader(os.pidfd_open(pid), triton_exited.set)
    while not stopping.is_set() and not triton_exited.is_set() and triton_alive(pid):
        waiting = [asyncio.ensure_future(stopping.wait()),
                   asyncio.ensure_future(triton_exited.wait())]
        await asyncio.wait(waiting, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
        for task in waiting:
            task.cancel()
    if stopping.is_set():
        stop_triton(pid)
    stop_janitor.set()
    server.close()
    for running in http_servers:
        running.shutdown()


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="offload-front: %(message)s")
    config = json.loads(sys.stdin.readline())
    logging.getLogger("offload_server").setLevel(config.get("log_level", "WARNING"))
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
