"""`offload models`, `offload infer`, `offload stats`: the client from the shell.

    offload models --server triton.example.org:8001
    offload infer jet_tagger --input jets.npz --output scores.npz
    offload stats jet_tagger
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from offload.endpoints import SERVERS_VARIABLE


def add_server_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", action="append", dest="servers", metavar="HOST:PORT",
                        help=f"Triton gRPC endpoint (repeatable; default: ${SERVERS_VARIABLE}, "
                             "else 127.0.0.1:8001)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    parser.add_argument("--tls", action="store_true",
                        help="use TLS with the system's CAs (the token, if any, comes from "
                             "$OFFLOAD_TOKEN)")
    parser.add_argument("--tls-ca", metavar="PEM", help="use TLS, trusting this CA bundle")
    parser.add_argument("--token-file", metavar="PATH",
                        help="read the token from this file (e.g. the one `offload serve` "
                             "prints); default: $OFFLOAD_TOKEN")


def _client(args: argparse.Namespace):
    import os

    from offload.client import Client
    from offload.endpoints import TLS

    servers = args.servers or os.environ.get(SERVERS_VARIABLE) or "127.0.0.1:8001"
    tls = TLS(root_certificates=args.tls_ca) if args.tls or args.tls_ca else None
    token = None
    if args.token_file:
        try:
            with Path(args.token_file).open() as source:
                token = source.read().strip()
        except OSError as error:
            raise SystemExit(f"offload: cannot read --token-file {args.token_file}: "
                             f"{error.strerror}") from None
    return Client(servers, timeout=args.timeout, tls=tls, token=token)


# ------------------------------------------------------------------ models
def add_models_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_argument(parser)


def run_models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        rows = client.models()
        width = max([len(r["name"]) for r in rows] + [4])
        print(f"{'name':<{width}}  version  state")
        for row in rows:
            reason = f"  ({row['reason']})" if row["reason"] else ""
            print(f"{row['name']:<{width}}  {row['version'] or '-':<7}  {row['state']}{reason}")
    return 0


# ------------------------------------------------------------------ infer
def add_infer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model")
    parser.add_argument("--input", required=True, metavar="IN.npz",
                        help="a .npz with one array per model input, named as the inputs")
    parser.add_argument("--output", metavar="OUT.npz", help="write the outputs here")
    parser.add_argument("--version", default=None)
    add_server_argument(parser)


def run_infer(args: argparse.Namespace) -> int:
    if args.output:
        _check_writable(args.output)  # before inferring: a result is never computed in vain
    inputs = _read_inputs(args.input)
    with _client(args) as client:
        model = client.model(args.model, args.version)
        outputs = model.infer(inputs)
        stats = model.stats()
    for name, value in outputs.items():
        print(f"{name}: {value.dtype} {list(value.shape)}  mean {np.mean(value):.6g}"
              if value.dtype.kind in "fiub" else f"{name}: {value.dtype} {list(value.shape)}")
    print(f"{stats.requests} request(s), {stats.inferences} inference(s), "
          f"{stats.bytes_sent:,} B sent, {stats.bytes_received:,} B received", file=sys.stderr)
    if args.output:
        try:
            np.savez(args.output, **outputs)
        except OSError as error:
            from offload.errors import OffloadError

            raise OffloadError(f"--output {args.output}: {error.strerror}") from None
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _read_inputs(path: str) -> dict[str, np.ndarray]:
    """The arrays of a .npz file, or a one-line error naming the file and the problem."""
    import zipfile

    from offload.errors import InvalidInputError

    def refuse(problem: str) -> InvalidInputError:
        return InvalidInputError(f"{path}: {problem}; --input takes a .npz file with one "
                                 "array per model input (np.savez('in.npz', name=array))")

    if not Path(path).exists():
        raise refuse("no such file")
    if Path(path).is_dir():
        raise refuse("is a folder")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise refuse(f"not a .npz file ({error})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise refuse(f"a single array ({'.npy' if isinstance(loaded, np.ndarray) else '?'} "
                     "file), not a .npz of named arrays")
    with loaded as data:
        inputs = {}
        for name in data.files:
            try:
                inputs[name] = data[name]
            except ValueError as error:  # object arrays need pickle, which is refused
                raise refuse(f"array '{name}' cannot be read without pickle ({error}); "
                             "store numeric or fixed-width byte-string arrays") from None
            except (OSError, zipfile.BadZipFile, EOFError) as error:
                raise refuse(f"array '{name}' is damaged ({error})") from None
    if not inputs:
        raise refuse("holds no arrays")
    return inputs


def _check_writable(path: str) -> None:
    from offload.errors import InvalidInputError

    target = path if path.endswith(".npz") else path + ".npz"  # (np.savez's rule)
    folder = Path(target).resolve().parent
    problem = ("is a folder" if Path(target).is_dir() else
               f"its folder {folder} does not exist" if not folder.is_dir() else
               f"cannot write in {folder}" if not os.access(folder, os.W_OK) else
               "exists and is not writable" if Path(target).exists()
               and not os.access(target, os.W_OK) else None)
    if problem:
        raise InvalidInputError(f"--output {path}: {problem}")


# ------------------------------------------------------------------ stats
def add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model")
    add_server_argument(parser)


def run_stats(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for row in client.model(args.model).server_stats():
            print(f"{row.model} v{row.version}: {row.requests} requests, {row.executions} "
                  f"executions (mean batch {row.mean_batch:.1f}), {row.failures} failures")
            print(f"  per request: queue {row.queue_us:.0f} µs, compute input "
                  f"{row.compute_input_us:.0f} µs, infer {row.compute_infer_us:.0f} µs, "
                  f"output {row.compute_output_us:.0f} µs")
    return 0
