"""Memory a refused, oversized request costs the embedded server: before (Triton's own
listener, as `offload serve` exposed it until the front existed) and after (the front).

Two requests, each refused in the end:

- gRPC: a ModelInfer whose tensor says 16 bytes and carries `--gib` GiB;
- HTTP: a 1 MB gzip body that inflates to 1 GiB.

For each, tritonserver's resident memory is read from /proc before, at its peak (VmHWM)
and after. "before" sends straight to Triton's private sockets; "after" through the front.
One fresh server per case, so that each peak is its own.

    python perf/bench_oversized.py       # results to perf/results/bench_oversized.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import socket
import sys
import tempfile
import time
import zlib
from pathlib import Path

import grpc
from bench_client import identity_repository
from rich.console import Console
from rich.table import Table

from offload import protocol
from offload_perf.options import machine
from offload_server import LocalServer

RESULTS = Path(__file__).parent / "results"
MIB = 1 << 20


def memory(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) / 1024
            for key in ("VmRSS", "VmHWM")}


def oversized_grpc(url: str, gib: float) -> str:
    request = protocol.service_pb2.ModelInferRequest(model_name="identity")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[4])
    size = int(gib * (1 << 30))
    tag = b"\x42"  # raw_input_contents, field 8, length-delimited
    length = bytearray()
    value = size
    while value >= 0x80:
        length.append((value & 0x7F) | 0x80)
        value >>= 7
    length.append(value)
    message = request.SerializeToString() + tag + bytes(length) + bytes(size)
    with grpc.insecure_channel(url, options=[("grpc.max_send_message_length", -1)]) as channel:
        infer = channel.unary_unary(protocol.SERVICE + "ModelInfer")
        try:
            infer(message, timeout=600)
        except grpc.RpcError as error:
            return f"{error.code().name}: {error.details()[:90]}"
    return "accepted"


def gzip_bomb() -> bytes:
    squeeze = zlib.compressobj(wbits=31)
    head = b'{"inputs":[{"name":"INPUT0","shape":[4],"datatype":"FP32","data":[0,0,0,0]}],"x":"'
    body = squeeze.compress(head)
    for _ in range(64):
        body += squeeze.compress(b" " * (16 * MIB))
    return body + squeeze.flush()


def post(connection: http.client.HTTPConnection, body: bytes, headers: dict) -> str:
    connection.request("POST", "/v2/models/identity/infer", body=body, headers=headers)
    response = connection.getresponse()
    return f"{response.status}: {response.read()[:90]!r}"


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=600)
        self.path_ = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.path_)


def measure(repo: Path, case: str, route: str, gib: float) -> dict:
    with LocalServer(repo, http_port=0) as server:
        time.sleep(1)
        before = memory(server.pid)
        if case == "grpc":
            url = server.grpc_url if route == "front" else server.triton_grpc_url
            answer = oversized_grpc(url, gib)
        else:
            headers = {"Content-Encoding": "gzip", "Content-Type": "application/json",
                       "Authorization": f"Bearer {server.token}"}
            if route == "front":
                host, port = server.http_url.removeprefix("http://").rsplit(":", 1)
                connection = http.client.HTTPConnection(host, int(port), timeout=600)
            else:
                connection = _Unix(str(Path(server.triton_grpc_url[5:]).parent / "http"))
            answer = post(connection, gzip_bomb(), headers)
        time.sleep(1)
        after = memory(server.pid)
        return {"case": case, "route": route, "answer": answer, "alive": server.ready(),
                "rss_before_mib": before["VmRSS"], "peak_before_mib": before["VmHWM"],
                "peak_mib": after["VmHWM"], "rss_after_mib": after["VmRSS"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.77, help="size of the gRPC request")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=200)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        repo = identity_repository(Path(scratch))
        for case in ("grpc", "http-gzip"):
            for route in ("triton", "front"):
                console.print(f"{case} via {route} ...")
                rows.append(measure(repo, case, route, args.gib))
    table = Table(title=f"tritonserver memory for one refused request (MiB; gRPC {args.gib} "
                        "GiB, HTTP 1 MB gzip → 1 GiB)")
    for column in ("request", "sent to", "answer", "RSS before", "peak before", "peak",
                   "RSS after", "server up"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["case"], "Triton's own listener (before)" if row["route"] == "triton"
                      else "offload's front (after)", row["answer"],
                      f"{row['rss_before_mib']:,.0f}", f"{row['peak_before_mib']:,.0f}",
                      f"{row['peak_mib']:,.0f}",
                      f"{row['rss_after_mib']:,.0f}", str(row["alive"]))
    console.print(table)
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "bench_oversized.json"
    path.write_text(json.dumps({"machine": machine(), "gib": args.gib, "rows": rows}, indent=2))
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
