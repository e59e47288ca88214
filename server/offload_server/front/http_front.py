"""The HTTP fronts: Triton's HTTP/REST API (when asked for) and its Prometheus metrics.

Triton's JSON parser aborts or overflows its stack on some bodies (a shape dimension of
2^63−1, `data` nested 100,000 arrays deep), which ends the whole server. So the HTTP front
serves health without a credential and everything else only with one, and before a body
reaches Triton it must have a length within the server's limit, no content encoding (a
small gzip body can inflate to gigabytes inside Triton), and, for inference, a JSON header
that parses with bounded nesting and shapes whose size fits the limit.
"""

from __future__ import annotations

import http.client
import http.server
import json
import logging
import math
import re
import socket
import ssl
import threading
from dataclasses import dataclass

from offload_server.front.policy import AccessPolicy

log = logging.getLogger(__name__)

#: JSON nesting that no valid request needs (a tensor of rank 8 inside a request is ~12).
MAX_JSON_DEPTH = 64
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authenticate", "proxy-authorization", "content-length"}
_MODEL = r"/v2/models/[^/]+(?:/versions/[^/]+)?"
_HTTP_CATEGORIES = [
    (re.compile(r"/v2/health/(live|ready)|" + _MODEL + "/ready"), "health"),
    (re.compile(_MODEL + r"/(infer|generate|generate_stream)"), "inference"),
    (re.compile(_MODEL + "/config"), "model-config"),
    (re.compile(r"/v2/models(/[^/]+(/versions/[^/]+)?)?/stats"), "statistics"),
    (re.compile(_MODEL + "/trace/setting|/v2/trace/setting"), "trace"),
    (re.compile(r"/v2/logging"), "logging"),
    (re.compile(r"/v2/repository(/.*)?"), "model-repository"),
    (re.compile(r"/v2/(system|cuda)sharedmemory(/.*)?"), "shared-memory"),
    (re.compile(r"/v2|" + _MODEL), "metadata"),
]
_ITEMSIZE = {"BOOL": 1, "INT8": 1, "UINT8": 1, "INT16": 2, "UINT16": 2, "FP16": 2, "BF16": 2,
             "INT32": 4, "UINT32": 4, "FP32": 4, "INT64": 8, "UINT64": 8, "FP64": 8,
             "BYTES": 1}


def http_category(path: str) -> str | None:
    for pattern, category in _HTTP_CATEGORIES:
        if pattern.fullmatch(path):
            return category
    return None


class BadRequest(Exception):
    """A body that must not reach Triton; the message says why."""


def check_inference_body(header: bytes, limit: int) -> None:
    """Raise BadRequest unless the JSON header of an inference request parses with bounded
    nesting and every input's shape is non-negative with a size that fits `limit` bytes."""
    try:
        request = json.loads(header)
    except RecursionError:
        raise BadRequest(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as error:
        raise BadRequest(f"the body is not JSON: {error}") from None
    if _depth(request) > MAX_JSON_DEPTH:
        raise BadRequest(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(request, dict):
        raise BadRequest("the body must be a JSON object")
    inputs = request.get("inputs", [])
    if not isinstance(inputs, list):
        raise BadRequest("'inputs' must be a list")
    for tensor in inputs:
        if not isinstance(tensor, dict):
            raise BadRequest("each input must be an object")
        name, shape = tensor.get("name", "?"), tensor.get("shape")
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise BadRequest(f"input '{name}': 'shape' must be a list of integers")
        if any(d < 0 for d in shape):
            raise BadRequest(f"input '{name}': negative dimension in shape {shape}")
        size = math.prod(shape) * _ITEMSIZE.get(str(tensor.get("datatype")), 1)
        if size > limit:
            raise BadRequest(f"input '{name}': shape {shape} makes {size} bytes, over this "
                             f"server's limit of {limit} bytes")


def _depth(value: object) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level > MAX_JSON_DEPTH:
                return level
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


@dataclass(frozen=True)
class HTTPFrontConfig:
    upstream: str  # Triton's HTTP (or metrics) unix socket
    policy: AccessPolicy
    max_request_bytes: int
    metrics_only: bool = False  # the metrics port: GET /metrics, nothing else
    timeout: float = 300.0


def _handler(config: HTTPFrontConfig) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "offload-front"
        sys_version = ""

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s %s", self.address_string(), format % args)

        def do_GET(self) -> None:
            self._relay()

        def do_POST(self) -> None:
            self._relay()

        def do_HEAD(self) -> None:
            self._relay()

        def _refuse(self, code: int, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _token_ok(self) -> bool:
            authorization = self.headers.get("Authorization", "")
            token = (authorization[7:].strip() if authorization[:7].lower() == "bearer "
                     else self.headers.get("offload-token", "").strip())
            return bool(token) and config.policy.matches(token)

        def _relay(self) -> None:
            path = self.path.split("?", 1)[0]
            if config.metrics_only:
                category = "metrics" if path == "/metrics" else None
                # As open as the statistics API: needs the token when the user set one.
                needs_token = config.policy.user_token
            else:
                category = http_category(path)
                needs_token = category != "health"
            if category is None:
                self._refuse(404, f"{path} is not served here")
                return
            body = self._body()  # its size is checked before anything else
            if body is None:
                return
            if needs_token and not self._token_ok():
                self._refuse(401 if "Authorization" not in self.headers else 403,
                             "this endpoint needs the server's token: send "
                             "'Authorization: Bearer <token>'")
                return
            if category == "inference" and body:
                try:
                    split = int(self.headers.get("Inference-Header-Content-Length", len(body)))
                    check_inference_body(body[:split], config.max_request_bytes)
                except (BadRequest, ValueError) as error:
                    self._refuse(400, f"refused before reaching the server: {error}")
                    return
            try:
                self._forward(body)
            except OSError as error:
                log.warning("Triton's HTTP socket: %s", error)
                self.close_connection = True
                self._refuse(502, "the server behind this front did not answer")

        def _body(self) -> bytes | None:
            """The body, read whole once its length is known to be within the limit."""
            if "Transfer-Encoding" in self.headers:
                self.close_connection = True
                self._refuse(411, "send a Content-Length, not a chunked body")
                return None
            if self.headers.get("Content-Encoding", "identity").lower() != "identity":
                self.close_connection = True
                self._refuse(415, "compressed bodies are not accepted; send them plain "
                                  "(or use gRPC)")
                return None
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if length < 0 or length > config.max_request_bytes:
                self.close_connection = True
                self._refuse(413, f"a body of {self.headers.get('Content-Length')} bytes; "
                                  f"this server accepts at most {config.max_request_bytes}")
                return None
            return self.rfile.read(length) if length else b""

        def _forward(self, body: bytes) -> None:
            upstream = _UnixHTTPConnection(config.upstream, config.timeout)
            try:
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in _HOP_BY_HOP and k.lower() != "authorization"}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream.getresponse()
                payload = response.read()
            finally:
                upstream.close()
            self.send_response(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

    return Handler


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type,
                 tls: ssl.SSLContext | None) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True,
                                          do_handshake_on_connect=False)


def serve_http(host: str, port: int, config: HTTPFrontConfig,
               tls: ssl.SSLContext | None) -> tuple[int, http.server.HTTPServer]:
    """Bind and serve in a daemon thread; the bound port and the server (to shut down)."""
    server = _Server((host, port), _handler(config), tls)
    threading.Thread(target=server.serve_forever, daemon=True,
                     name=f"front-http-{server.server_address[1]}").start()
    return server.server_address[1], server
