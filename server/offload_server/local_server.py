"""Start and stop a real `tritonserver` on this machine, from Python.

    with LocalServer("model_repository", models=["jet_tagger"]) as server:
        client = offload.Client(server.grpc_url)

Used by `offload serve`, by the tests, and by the client's `fallback="local"`.

Triton listens only on unix sockets in the server's private working folder (mode 0700):
nobody but this user reaches it there. The network sees the front process
(:mod:`offload_server.front`) instead, which checks credentials per API, bounds request
sizes and carries TLS. Without a user token, the server generates a secret for the APIs
that change what it runs or show other clients' state (model repository, shared memory,
trace, logging); `token` holds it, and `token_file` (mode 0600) too.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import http.client
import json
import logging
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from offload_server.errors import ModelRepositoryError, PortInUseError, ServerStartError
from offload_server.triton_install import assemble_backends, find_triton

log = logging.getLogger(__name__)

CONTROL_MODES = ("none", "explicit", "poll")

# Triton logs in glog format: a severity letter, then MMDD and the time.
_ERROR_LINE = re.compile(r"^E\d{4} ")
# Error lines every CPU-only start prints; they say nothing about what went wrong.
_HARMLESS = ("CudaDriverHelper has not been initialized",)
_LOADED_LINE = re.compile(r"successfully loaded '([^']+)'")
_LOAD_FAILED_LINE = re.compile(r"failed to load '([^']+)'")

_running: weakref.WeakSet[LocalServer] = weakref.WeakSet()


@dataclass(frozen=True)
class ModelStatus:
    """One row of the server's model table."""

    name: str
    version: str
    state: str
    backend: str = "-"
    max_batch_size: int | None = None
    reason: str = ""


#: Default bound on one request (a gRPC message, or an HTTP body): 64 MiB.
DEFAULT_MAX_REQUEST_BYTES = 64 << 20
#: Default bound on inference calls in flight through the front, all clients together:
#: the embedded server's queue bound (the repository's CPU configs set no queue policy,
#: with which Triton 2.51's dynamic batcher can stall 500 ms; see README "CPU backends").
DEFAULT_MAX_IN_FLIGHT = 512

#: tritonserver flags that would open it beyond its private sockets, or that the front
#: owns: refused in `extra_args`, with the LocalServer argument to use instead.
FRONT_FLAGS = {
    "--grpc-address": "host", "--grpc-port": "grpc_port", "--http-address": "http_host",
    "--http-port": "http_port", "--metrics-address": "metrics_host",
    "--metrics-port": "metrics_port", "--allow-http": "http_port",
    "--allow-grpc": "grpc_port", "--allow-metrics": "metrics_port",
    "--allow-sagemaker": None, "--sagemaker-port": None, "--allow-vertex-ai": None,
    "--vertex-ai-port": None, "--grpc-use-ssl": "tls", "--grpc-use-ssl-mutual": "tls",
    "--grpc-server-cert": "tls", "--grpc-server-key": "tls", "--grpc-root-cert": "tls",
    "--model-repository": "repository", "--backend-directory": None,
}


@dataclass(frozen=True)
class ServerTLS:
    """TLS on the gRPC port: the server's certificate and key (PEM files), and optionally
    the CA whose client certificates are required (mutual TLS)."""

    certificate: str | os.PathLike[str]
    private_key: str | os.PathLike[str]
    client_ca: str | os.PathLike[str] | None = None


class LocalServer:
    """A `tritonserver` child process serving a model repository on this machine, behind
    its front (see the module's docstring).

    Ports given as 0 are chosen free at start; `http_port` and `metrics_port` None (the
    default) leave those fronts off. `host` is where gRPC listens; HTTP and metrics listen
    on `http_host` / `metrics_host` (127.0.0.1 unless given). Without `models`, every model
    of the repository is loaded (control mode `none`); with `models`, only those (mode
    `explicit`). `start()` returns once the server and every requested model are ready, or
    raises :class:`~offload_server.errors.ServerStartError` carrying Triton's own error lines.
    """

    def __init__(
        self,
        repository: str | os.PathLike[str] = "model_repository",
        *,
        models: Sequence[str] | None = None,
        host: str = "127.0.0.1",
        grpc_port: int = 0,
        http_port: int | None = None,
        metrics_port: int | None = None,
        http_host: str = "127.0.0.1",
        metrics_host: str = "127.0.0.1",
        model_control_mode: str | None = None,
        log_verbose: int = 0,
        auto_complete_config: bool = False,
        exit_timeout: int = 5,
        startup_timeout: float = 300.0,
        extra_args: Sequence[str] = (),
        token: str | None = None,
        tls: ServerTLS | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        shared_memory_sweep: float = 10.0,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        on_status: Callable[[str], None] | None = None,
        on_log_line: Callable[[str], None] | None = None,
        model_config_name: str | None = None,
    ) -> None:
        self.repository = Path(repository).resolve()
        # Triton's --model-config-name: each model's configs/<name>.pbtxt instead of its
        # config.pbtxt (models without that file keep config.pbtxt).
        if model_config_name is not None and not CONFIG_NAME_PATTERN.fullmatch(model_config_name):
            raise ValueError(f"model_config_name must be a file name without its .pbtxt "
                             f"(letters, digits, '.', '_', '-'), got {model_config_name!r}")
        self.model_config_name = model_config_name
        self.models_requested = list(models) if models is not None else None
        mode = model_control_mode or ("explicit" if models is not None else "none")
        if mode not in CONTROL_MODES:
            raise ValueError(f"model_control_mode must be one of {CONTROL_MODES}, got {mode!r}")
        if models is not None and mode != "explicit":
            raise ValueError(
                f"models={list(models)} loads only those models, which needs "
                f"model_control_mode='explicit' (got {mode!r})"
            )
        for argument in extra_args:
            flag = argument.split("=", 1)[0]
            if flag in FRONT_FLAGS:
                instead = FRONT_FLAGS[flag]
                raise ValueError(
                    f"{flag} cannot be passed to tritonserver here: Triton listens only on "
                    "private sockets behind offload's front"
                    + (f"; use LocalServer's {instead}= (offload serve's "
                       f"--{instead.replace('_', '-')})" if instead else ""))
        if max_request_bytes < 1:
            raise ValueError(f"max_request_bytes must be positive, got {max_request_bytes}")
        self.model_control_mode = mode
        self.host = host
        self.http_host = http_host
        self.metrics_host = metrics_host
        self._ports: dict[str, int | None] = {"grpc": grpc_port, "http": http_port,
                                              "metrics": metrics_port}
        self.log_verbose = log_verbose
        self.auto_complete_config = auto_complete_config
        self.exit_timeout = exit_timeout
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args)
        self._user_token = bool(token)
        self._token = token or secrets.token_urlsafe(32)
        self.tls = tls
        self.max_request_bytes = max_request_bytes
        #: seconds between sweeps for shared-memory regions of clients that are gone
        self.shared_memory_sweep = shared_memory_sweep
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        #: inference calls the front lets through at once (the server's queue bound)
        self.max_in_flight = max_in_flight
        self._on_status = on_status
        self._on_log_line = on_log_line
        self._process: subprocess.Popen[bytes] | None = None
        self._front: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._log_tail: deque[str] = deque(maxlen=400)
        self._loaded: set[str] = set()
        self._failed: set[str] = set()
        self._reader: threading.Thread | None = None
        self._log_file: Path | None = None

    # ----------------------------------------------------------------- addresses
    @property
    def grpc_port(self) -> int:
        return self._ports["grpc"] or 0

    @property
    def http_port(self) -> int | None:
        """The HTTP front's port; None when it is off."""
        return self._ports["http"]

    @property
    def metrics_port(self) -> int | None:
        """The metrics front's port; None when it is off."""
        return self._ports["metrics"]

    @staticmethod
    def _connectable(host: str) -> str:
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"[{host}]" if ":" in host else host

    @property
    def grpc_url(self) -> str:
        """`host:port` of the gRPC front, as gRPC clients take it."""
        return f"{self._connectable(self.host)}:{self.grpc_port}"

    @property
    def http_url(self) -> str | None:
        if self.http_port is None:
            return None
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self._connectable(self.http_host)}:{self.http_port}"

    @property
    def metrics_url(self) -> str | None:
        if self.metrics_port is None:
            return None
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self._connectable(self.metrics_host)}:{self.metrics_port}/metrics"

    @property
    def triton_grpc_url(self) -> str:
        """Triton's own gRPC socket, `unix:…`: no front, no credential, no size bound;
        reachable only by this user (benchmarks of the client use it)."""
        return f"unix:{self._socket('grpc')}"

    @property
    def token(self) -> str:
        """The credential of this server's restricted APIs: the user's token, or the secret
        generated at start (model repository, shared memory, trace and logging)."""
        return self._token

    @property
    def token_file(self) -> Path | None:
        """A file (mode 0600) holding `token`, while the server runs."""
        return self._workdir / "token" if self._workdir is not None else None

    @property
    def pid(self) -> int | None:
        """tritonserver's pid (also the process group of Triton and its backend stubs)."""
        return self._process.pid if self._process else None

    @property
    def front_pid(self) -> int | None:
        return self._front.pid if self._front else None

    @property
    def log_file(self) -> Path | None:
        """Triton's whole output, kept while the server runs."""
        return self._log_file

    @property
    def running(self) -> bool:
        return (self._process is not None and self._process.poll() is None
                and self._front is not None and self._front.poll() is None)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> LocalServer:
        if self._process is not None:
            raise ServerStartError("this LocalServer was already started")
        if not self.repository.is_dir():
            raise ModelRepositoryError(
                f"model repository {self.repository} does not exist or is not a folder; "
                "pass the folder that holds one sub-folder per model"
            )
        install = find_triton()
        self._check_ports()
        # mkdtemp makes the folder mode 0700: Triton's sockets in it are this user's alone.
        self._workdir = Path(tempfile.mkdtemp(prefix="offload-triton-"))
        if len(str(self._socket("metrics"))) > 100:  # sun_path holds 108 bytes
            raise ServerStartError(f"the temporary folder {self._workdir} has too long a path "
                                   "for unix sockets; set TMPDIR to a shorter one")
        descriptor = os.open(self._workdir / "token", os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                             0o600)
        with os.fdopen(descriptor, "w") as token_file:
            token_file.write(self._token + "\n")
        backends = assemble_backends(install, self._workdir / "backends")
        self._log_file = self._workdir / "tritonserver.log"
        command = [str(install.binary), *self._arguments(backends)]
        log.info("starting %s", " ".join(command))
        environment = self._environment(install.library_dirs)
        main_thread = threading.current_thread() is threading.main_thread()
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
            # Its own session and process group, so that stop() reaches the Python-backend
            # stubs too; Ctrl-C in a terminal reaches only us, and we stop it. No
            # preexec_fn: Python code between fork and exec in a process that uses gRPC
            # can abort the child in gRPC's fork handlers (seen here).
            start_new_session=True,
        )
        _running.add(self)
        self._reader = threading.Thread(target=self._read_output, daemon=True,
                                         name=f"tritonserver-{self._process.pid}-log")
        self._reader.start()
        try:
            self._start_front(environment, main_thread)
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `exit_timeout` + 5 s), its front and
        every process of its group, then remove its working folder. Safe to call twice."""
        process = self._process
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=self.exit_timeout + 5)
                except subprocess.TimeoutExpired:
                    log.warning("tritonserver %d did not stop in time; killing it", process.pid)
            # Stubs that outlive tritonserver (or all of it, after the timeout) die here.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if self._reader is not None:
                self._reader.join(timeout=5)
            _running.discard(self)
        if self._front is not None:
            with contextlib.suppress(ProcessLookupError):
                self._front.kill()  # (SIGTERM would make it stop Triton: done already)
            self._front.wait()
            if self._front.stdout is not None:
                self._front.stdout.close()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            self._log_file = None

    def kill(self) -> None:
        """SIGKILL every process of the server at once, as a crash of its node would (no
        draining, no cleanup); stop() still cleans up after it."""
        for pid, group in ((self.pid, True), (self.front_pid, False)):
            if pid is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    (os.killpg if group else os.kill)(pid, signal.SIGKILL)
        for process in (self._process, self._front):
            if process is not None:
                process.wait()

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until tritonserver exits; its exit code, or None on timeout."""
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 50) -> list[str]:
        return list(self._log_tail)[-lines:]

    # ----------------------------------------------------------------- queries
    def models(self) -> list[ModelStatus]:
        """Every model of the repository with its state, backend and max batch size."""
        index = self._http_json("POST", "/v2/repository/index")
        rows = []
        for entry in sorted(index, key=lambda e: (e["name"], e.get("version", ""))):
            backend, max_batch = "-", None
            if entry.get("state") == "READY":
                config = self._http_json("GET", f"/v2/models/{entry['name']}/config")
                assert isinstance(config, dict)
                backend = config.get("backend") or config.get("platform") or "-"
                max_batch = int(config.get("max_batch_size", 0))
            rows.append(ModelStatus(entry["name"], entry.get("version", "-"),
                                    entry.get("state", "UNKNOWN"), backend, max_batch,
                                    entry.get("reason", "")))
        return rows

    def ready(self) -> bool:
        """Whether Triton answers that it is ready (asked on its own socket)."""
        try:
            status, _ = self._triton_http("GET", "/v2/health/ready", timeout=2)
        except OSError:
            return False
        return status == 200

    # ------------------------------------------------------------------ internals
    def _socket(self, kind: str) -> Path:
        """Triton's unix socket of one kind (gRPC's path ends in ':<port>', as Triton joins
        address and port; the HTTP servers ignore the port)."""
        assert self._workdir is not None, "the server has not been started"
        return self._workdir / ("grpc:1" if kind == "grpc" else kind)

    def _arguments(self, backends: Path) -> list[str]:
        assert self._workdir is not None
        private = f"unix:{self._workdir}"
        args = [
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--model-control-mode={self.model_control_mode}",
            f"--grpc-address={private}/grpc", "--grpc-port=1",
            f"--http-address={private}/http", "--http-port=1",
            f"--metrics-address={private}/metrics", "--metrics-port=1",
            f"--log-verbose={self.log_verbose}",
            f"--exit-timeout-secs={self.exit_timeout}",
            # No GPU here: skip the NVML/DCGM probing that only warns on a CPU machine.
            "--allow-gpu-metrics=false",
        ]
        if not self.auto_complete_config:
            args.append("--disable-auto-complete-config")
        args += [f"--load-model={name}" for name in self.models_requested or ()]
        if self.model_config_name:
            args.append(f"--model-config-name={self.model_config_name}")
        return args + self.extra_args

    def _check_ports(self) -> None:
        """Refuse a taken port before starting anything (the front's bind decides in the
        end; this only saves starting Triton in vain)."""
        hosts = {"grpc": self.host, "http": self.http_host, "metrics": self.metrics_host}
        for kind, port in self._ports.items():
            if port and not _port_is_free(hosts[kind], port):
                raise _port_in_use(kind, hosts[kind], port)

    def _start_front(self, environment: dict[str, str], main_thread: bool) -> None:
        """Start the front in tritonserver's process group; it binds the listeners and
        says which ports it got (or why it could not)."""
        assert self._process is not None
        listeners = {"grpc": self.host, "http": self.http_host, "metrics": self.metrics_host}
        config = {
            "upstream": {kind: str(self._socket(kind)) for kind in ("grpc", "http", "metrics")},
            "triton_pid": self._process.pid,
            # Linux ties the parent-death signal to the thread that forks, and only the
            # main thread lives as long as this process: only then does the front stop
            # the server when we die, so that a crashed job never leaves a server behind.
            "parent_pid": os.getpid() if main_thread else None,
            "token": self._token,
            "user_token": self._user_token,
            "max_request_bytes": self.max_request_bytes,
            "tls": None if self.tls is None else {
                "certificate": str(self.tls.certificate),
                "private_key": str(self.tls.private_key),
                "client_ca": None if self.tls.client_ca is None else str(self.tls.client_ca)},
            "log_level": "INFO" if self.log_verbose else "WARNING",
            "janitor_interval": self.shared_memory_sweep,
            "max_in_flight": self.max_in_flight,
            **{kind: None if self._ports[kind] is None else [host, self._ports[kind]]
               for kind, host in listeners.items()},
        }
        self._front = subprocess.Popen(
            [sys.executable, "-m", "offload_server.front"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=environment, start_new_session=True)
        assert self._front.stdin is not None
        assert self._front.stdout is not None
        self._front.stdin.write(json.dumps(config).encode() + b"\n")
        self._front.stdin.close()
        ready, _, _ = select.select([self._front.stdout], [], [], 60)
        line = self._front.stdout.readline() if ready else b""
        try:
            answer = json.loads(line)
        except ValueError:
            raise ServerStartError("offload's front process did not start (no answer in 60 s"
                                   f"; exit code {self._front.poll()})") from None
        if "error" in answer:
            kind = answer["listener"]
            host, port = listeners[kind], self._ports[kind]
            if answer.get("errno") == errno.EADDRINUSE:
                raise _port_in_use(kind, host, port)
            raise ServerStartError(f"cannot listen for {kind} on {host}:{port}: "
                                   f"{answer['error']}")
        self._ports.update(answer["ports"])

    def _environment(self, library_dirs: list[Path]) -> dict[str, str]:
        env = dict(os.environ)
        # The stub takes its Python from the first python3 on PATH: make it ours, so that
        # numpy, onnxruntime, torch and tensorflow of this environment are found.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [*(str(d) for d in library_dirs), env.get("LD_LIBRARY_PATH", "")]
        ).rstrip(os.pathsep)
        # The CPU backends import offload_server: make it importable even from a source tree.
        sources = {str(Path(m.__file__).parent.parent) for m in _project_modules()}
        env["PYTHONPATH"] = os.pathsep.join([*sorted(sources), env.get("PYTHONPATH", "")])
        env["PYTHONPATH"] = env["PYTHONPATH"].rstrip(os.pathsep)
        return env

    def _read_output(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        assert self._log_file is not None
        # The pipe is closed here, at its end, by the only thread that reads it.
        with self._process.stdout as output, self._log_file.open("w", encoding="utf-8") as sink:
            for raw in output:
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                sink.write(line + "\n")
                sink.flush()
                self._log_tail.append(line)
                if match := _LOADED_LINE.search(line):
                    self._loaded.add(match.group(1))
                if match := _LOAD_FAILED_LINE.search(line):
                    self._failed.add(match.group(1))
                if self._on_log_line is not None:
                    self._on_log_line(line)

    def _expected_models(self) -> list[str]:
        if self.models_requested is not None:
            return self.models_requested
        if self.model_control_mode == "explicit":
            return []
        return sorted(p.name for p in self.repository.iterdir()
                      if p.is_dir() and (p / "config.pbtxt").is_file())

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        expected = self._expected_models()
        started = time.monotonic()
        while True:
            elapsed = time.monotonic() - started
            if self._process.poll() is not None:
                if self._reader is not None:
                    self._reader.join(timeout=5)
                raise ServerStartError(self._failure_message(
                    f"tritonserver exited with code {self._process.returncode} while starting"))
            if self.ready():
                break
            if elapsed > self.startup_timeout:
                raise ServerStartError(self._failure_message(
                    f"tritonserver was not ready after {self.startup_timeout:.0f} s"))
            self._status(f"starting tritonserver: {elapsed:4.0f} s, models loaded "
                         f"{len(self._loaded & set(expected))}/{len(expected)}")
            time.sleep(0.25)
        not_ready = [m for m in self.models() if m.name in expected and m.state != "READY"]
        if not_ready:
            raise ServerStartError(self._failure_message(
                "models not ready: " + ", ".join(f"{m.name} ({m.state}: {m.reason})"
                                                  for m in not_ready)))
        self._status(f"tritonserver ready in {time.monotonic() - started:.1f} s, "
                     f"{len(expected)} model(s)")

    def _failure_message(self, headline: str) -> str:
        errors = [line for line in self._log_tail
                  if _ERROR_LINE.match(line) and not any(h in line for h in _HARMLESS)]
        # Triton repeats a model's error once per instance and once more when it gives up on
        # the model; its "failed to load" line alone says it all.
        failures = [line for line in errors if _LOAD_FAILED_LINE.search(line)]
        shown = [_readable(line) for line in failures or errors] or self.log_tail(20)
        hint = _no_gpu_hint(errors, self.model_config_name)
        if self._failed:
            hint += (f"\nfailed to load: {', '.join(sorted(self._failed))}; check them with "
                    f"`offload repo check {self.repository}`")
        return f"{headline}. Triton said:\n  " + "\n  ".join(shown) + hint

    def _status(self, text: str) -> None:
        if self._on_status is not None:
            self._on_status(text)

    def _triton_http(self, method: str, path: str, *,
                     timeout: float = 10) -> tuple[int, bytes]:
        """A request to Triton's own HTTP socket: (status, body)."""
        connection = _UnixHTTPConnection(str(self._socket("http")), timeout)
        try:
            connection.request(method, path, body=b"{}" if method == "POST" else None)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def _http_json(self, method: str, path: str) -> list | dict:
        status, body = self._triton_http(method, path)
        if status != 200:
            raise ServerStartError(f"tritonserver answered {status} to {method} {path}: "
                                   f"{body[:200]!r}")
        return json.loads(body)


CONFIG_NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_NO_GPU = "but no GPUs are available"


def _no_gpu_hint(errors: list[str], config_name: str | None) -> str:
    """Triton refuses KIND_GPU instances where it sees no GPU, before any backend runs."""
    if not any(_NO_GPU in line for line in errors):
        return ""
    variant = f"configs/{config_name}.pbtxt" if config_name else "the config"
    return (f"\nTriton sees no GPU on this machine and {variant} asks for KIND_GPU instances; "
            "serve the CPU configs (without --model-config-name) or use a machine with an "
            "NVIDIA GPU and driver")


def _readable(line: str) -> str:
    """A Triton error line without its glog prefix, quoting and Python traceback."""
    text = line.split("] ", 1)[-1].strip().strip('"')
    text = text.split("\\n\\nAt:\\n", 1)[0]
    return text.replace("\\n", "\n    ")


def _project_modules() -> list:
    import offload
    import offload_server
    return [offload, offload_server]


def _port_in_use(kind: str, host: str, port: int | None) -> PortInUseError:
    flag = {"grpc": "--grpc-port", "http": "--http-port", "metrics": "--metrics-port"}[kind]
    return PortInUseError(f"{kind} port {port} on {host} is already in use (another "
                          f"tritonserver?); stop that process or choose another with {flag} "
                          "(0 picks a free one)")


def _port_is_free(host: str, port: int) -> bool:
    """Whether nothing listens on the port. SO_REUSEADDR, as the front's listener sets it:
    connections of a server that just died (TIME_WAIT) do not hold the port, so a server
    restarted on its old port starts; a live listener still refuses the bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        server.stop()
