"""`offload serve`: a real Triton server on this machine, in the foreground.

    offload serve                                  # model_repository/, ports 8001/8000/8002
    offload serve --grpc-port 0 -m jet_tagger      # a free port, one model (explicit mode)
    offload serve -- --grpc-infer-allocation-pool-size=16   # anything after -- goes to Triton
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
from pathlib import Path

from rich.console import Console
from rich.table import Table

from offload_server.local_server import (
    CONFIG_NAME_PATTERN,
    CONTROL_MODES,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_REQUEST_BYTES,
    LocalServer,
    ServerTLS,
)

_WARNING_OR_ERROR = re.compile(r"^[EW]\d{4} ")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", default="model_repository",
                        help="folder with one sub-folder per model (default: %(default)s)")
    parser.add_argument("-m", "--model", action="append", dest="models", metavar="NAME",
                        help="load only this model (repeatable; implies explicit control mode)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address gRPC listens on (default: %(default)s; 0.0.0.0 for "
                             "every interface)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="0 picks a free port")
    parser.add_argument("--http-port", type=int, default=None,
                        help="serve Triton's HTTP/REST API here (default: off; 0 picks a "
                             "free port); every endpoint but health needs the token")
    parser.add_argument("--http-host", default="127.0.0.1", help="address of the HTTP front "
                                                                 "(default: %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=8002,
                        help="Prometheus metrics (0 picks a free port)")
    parser.add_argument("--metrics-host", default="127.0.0.1",
                        help="address of the metrics front (default: %(default)s)")
    parser.add_argument("--no-metrics", action="store_true", help="serve no metrics")
    parser.add_argument("--max-request-size", type=_size, default=DEFAULT_MAX_REQUEST_BYTES,
                        metavar="BYTES",
                        help="largest request accepted, e.g. 16MiB or 1GB (default: 64MiB); "
                             "larger ones are refused before they reach Triton")
    parser.add_argument("--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT,
                        metavar="N",
                        help="inference requests let through at once, all clients together "
                             "(default: %(default)s); more are refused as a full queue, "
                             "which clients retry")
    parser.add_argument("--model-control-mode", choices=CONTROL_MODES, default=None,
                        help="Triton's model control mode (default: none, or explicit with -m)")
    parser.add_argument("--log-verbose", type=int, default=0, metavar="LEVEL",
                        help="Triton's verbose log level")
    parser.add_argument("--auto-complete-config", action="store_true",
                        help="let Triton complete configs (off by default: configs must be whole)")
    parser.add_argument("--model-config-name", metavar="NAME", type=_config_name,
                        help="serve each model's configs/NAME.pbtxt instead of its "
                             "config.pbtxt, where it has one (e.g. gpu)")
    parser.add_argument("--startup-timeout", type=float, default=300.0, metavar="SECONDS")
    parser.add_argument("--exit-timeout", type=int, default=5, metavar="SECONDS",
                        help="how long Triton may drain in-flight requests when stopping")
    protection = parser.add_argument_group(
        "protection", "a token for the APIs it guards, and TLS on every listener")
    protection.add_argument("--token-file", metavar="PATH",
                            help="require the token in this file for every API but health "
                                 "(clients: token= or OFFLOAD_TOKEN); it stays in this "
                                 "process, off every command line and log. Without it, a "
                                 "generated token guards the model-repository, "
                                 "shared-memory, trace and logging APIs")
    protection.add_argument("--tls-cert", metavar="PEM",
                            help="server certificate (TLS on every listener)")
    protection.add_argument("--tls-key", metavar="PEM", help="server private key")
    protection.add_argument("--tls-client-ca", metavar="PEM",
                            help="require client certificates signed by this CA (mutual TLS)")
    parser.add_argument("triton_args", nargs=argparse.REMAINDER,
                        help="after --: further tritonserver flags, passed through unchanged")


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True, highlight=False)
    try:
        token, tls = _protection(args)
    except ValueError as error:
        console.print(f"[bold red]error:[/] {error}")
        return 2
    passthrough = [a for a in args.triton_args if a != "--"]
    ready = threading.Event()  # serving: Triton's warnings and errors are echoed
    started = threading.Event()  # start() returned: a signal now means "stop cleanly"

    def echo(line: str) -> None:
        # Once serving, Triton's warnings and errors are worth seeing; its chatter is not.
        if ready.is_set() and (_WARNING_OR_ERROR.match(line) or args.log_verbose):
            console.print(line, markup=False)

    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        if not started.is_set():
            raise KeyboardInterrupt  # while starting: unwind, and start() stops the server
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)

    with console.status("starting tritonserver") as status:
        try:
            server = LocalServer(
                args.model_repository, models=args.models, host=args.host,
                grpc_port=args.grpc_port, http_port=args.http_port,
                metrics_port=None if args.no_metrics else args.metrics_port,
                http_host=args.http_host, metrics_host=args.metrics_host,
                model_control_mode=args.model_control_mode, log_verbose=args.log_verbose,
                auto_complete_config=args.auto_complete_config,
                exit_timeout=args.exit_timeout, startup_timeout=args.startup_timeout,
                extra_args=passthrough, on_log_line=echo, token=token, tls=tls,
                max_request_bytes=args.max_request_size, on_status=status.update,
                max_in_flight=args.max_in_flight,
                model_config_name=args.model_config_name,
            ).start()
        except ValueError as error:  # arguments LocalServer refuses (pass-through flags)
            console.print(f"[bold red]error:[/] {error}")
            return 2
        started.set()
    try:
        console.print(f"[bold green]tritonserver ready[/] (pid {server.pid}, "
                      f"model repository {server.repository})")
        console.print(exposure(server, token_file=args.token_file), markup=False)
        console.print(model_table(server))
        console.print("Ctrl-C stops the server.")
        ready.set()
        while not stop.is_set():
            code = server.wait(timeout=0.5)
            if code is not None:
                console.print(f"[bold red]tritonserver exited by itself with code {code}[/]; "
                              "last lines:\n  " + "\n  ".join(server.log_tail(20)), markup=False)
                return code or 1
        console.print("stopping tritonserver ...")
    finally:
        server.stop()
    console.print("stopped.")
    return 0


def exposure(server: LocalServer, *, token_file: str | None) -> str:
    """What listens where, serving which APIs to whom, with which credential."""
    user_token = token_file is not None
    transport = ("mutual TLS" if server.tls.client_ca else "TLS") if server.tls else "plain"
    apis = ("health open; everything else needs the token" if user_token else
            "health, metadata, inference, config, statistics open; model repository, "
            "shared memory, trace, logging need the token")
    lines = [f"  gRPC     {server.grpc_url}  ({transport}; {apis}; requests up to "
             f"{server.max_request_bytes} bytes, {server.max_in_flight} inference requests "
             "at once)"]
    lines.append(f"  token    {token_file}  (yours)" if user_token else
                 f"  token    {server.token_file}  (generated for this server; only this "
                 "user can read it)")
    if server.http_url:
        lines.append(f"  HTTP     {server.http_url}  ({transport}; health open; everything "
                     "else needs the token; bodies checked before they reach Triton)")
    else:
        lines.append("  HTTP     off (--http-port serves it)")
    if server.metrics_url:
        lines.append(f"  metrics  {server.metrics_url}  (" + (
            "needs the token as 'Authorization: Bearer'" if user_token else
            "open to whoever reaches this address") + ")")
    else:
        lines.append("  metrics  off")
    local = ("127.0.0.1", "localhost", "::1")
    wide = [name for name, host, on in (
        ("gRPC", server.host, True), ("HTTP", server.http_host, server.http_url),
        ("metrics", server.metrics_host, server.metrics_url)) if on and host not in local]
    if wide:
        lines.append(f"  open to other hosts: {', '.join(wide)}" + (
            "" if user_token or "gRPC" not in wide else
            "; they may run inference without a token (--token-file requires one)"))
    lines.append(f"  log      {server.log_file}")
    return "\n".join(lines)


def _size(text: str) -> int:
    """'64MiB', '1GB', '1000000' -> bytes."""
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 1 << 10,
             "mib": 1 << 20, "gib": 1 << 30}
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in units or int(match.group(1)) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size: a positive number of bytes, optionally with a unit "
            "(KB, MB, GB, KiB, MiB, GiB)")
    return int(match.group(1)) * units[match.group(2).lower()]


def _config_name(value: str) -> str:
    if not CONFIG_NAME_PATTERN.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r}: a config name is a file name under "
                                         "configs/ without .pbtxt, e.g. gpu")
    return value


def _protection(args: argparse.Namespace) -> tuple[str | None, ServerTLS | None]:
    token = None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as error:
            raise ValueError(f"cannot read --token-file {args.token_file}: "
                             f"{error.strerror}") from None
        if not token:
            raise ValueError(f"--token-file {args.token_file} is empty")
        if not all("!" <= c <= "~" for c in token):
            raise ValueError(f"the token in {args.token_file} must be printable ASCII "
                             "without spaces (it travels in a header)")
    tls = None
    if args.tls_cert or args.tls_key or args.tls_client_ca:
        if not (args.tls_cert and args.tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        for path in (args.tls_cert, args.tls_key, args.tls_client_ca):
            if path and not Path(path).is_file():
                raise ValueError(f"{path}: no such file")
        tls = ServerTLS(args.tls_cert, args.tls_key, args.tls_client_ca)
    return token, tls


def model_table(server: LocalServer) -> Table:
    table = Table(title="models")
    for column in ("name", "version", "backend", "max batch", "state"):
        table.add_column(column)
    for model in server.models():
        state = model.state if not model.reason else f"{model.state}: {model.reason}"
        max_batch = "-" if model.max_batch_size is None else str(model.max_batch_size)
        table.add_row(model.name, model.version, model.backend, max_batch, state)
    if not table.row_count:
        table.add_row("(none)", "", "", "", "")
    return table


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: offload serve")
