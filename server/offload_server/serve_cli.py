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
                        help="address to listen on (default: %(default)s; 0.0.0.0 for all)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="0 picks a free port")
    parser.add_argument("--http-port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--metrics-port", type=int, default=8002, help="0 picks a free port")
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
        "protection", "a token for every request but health checks, and TLS on gRPC")
    protection.add_argument("--token-file", metavar="PATH",
                            help="require the token in this file (clients: token= or "
                                 "OFFLOAD_TOKEN); kept off the command line and the logs")
    protection.add_argument("--tls-cert", metavar="PEM", help="server certificate (gRPC TLS)")
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

    def on_signal(signum: int, _frame: object) -> None:
        if not started.is_set():
            raise KeyboardInterrupt  # while starting: unwind, and start() stops the server
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)

    with console.status("starting tritonserver") as status:
        server = LocalServer(
            args.model_repository, models=args.models, host=args.host,
            grpc_port=args.grpc_port, http_port=args.http_port, metrics_port=args.metrics_port,
            model_control_mode=args.model_control_mode, log_verbose=args.log_verbose,
            auto_complete_config=args.auto_complete_config, exit_timeout=args.exit_timeout,
            startup_timeout=args.startup_timeout, extra_args=passthrough, on_log_line=echo,
            token=token, tls=tls,
            on_status=status.update, model_config_name=args.model_config_name,
        ).start()
        started.set()
    try:
        console.print(f"[bold green]tritonserver ready[/] (pid {server.pid}, "
                      f"model repository {server.repository})")
        if token or tls:
            console.print("  protected: " + ", ".join(
                ([f"token from {args.token_file}"] if token else [])
                + (["mutual TLS" if tls.client_ca else "TLS"] if tls else [])))
        console.print(f"  gRPC     {server.grpc_url}\n  HTTP     {server.http_url}\n"
                      f"  metrics  {server.metrics_url}\n  log      {server.log_file}")
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
        if any(c in token for c in ",:= \t\n"):
            raise ValueError(f"the token in {args.token_file} may not contain ',', ':', '=' "
                             "or whitespace (Triton's flag syntax)")
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
