"""Start and stop a real `tritonserver` on this machine, from Python.

    with LocalServer("model_repository", models=["jet_tagger"]) as server:
        client = offload.Client(server.grpc_url)

Used by `offload serve`, by the tests, and by the client's `fallback="local"`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from offload.errors import ModelRepositoryError, PortInUseError, ServerStartError
from offload.tokens import TOKEN_KEY
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


#: What `token=` protects: every protocol but health, which probes need without a token.
RESTRICTED = ("metadata,inference,shared-memory,model-config,model-repository,statistics,"
              "trace,logging")


@dataclass(frozen=True)
class ServerTLS:
    """TLS on the gRPC port: the server's certificate and key (PEM files), and optionally
    the CA whose client certificates are required (mutual TLS)."""

    certificate: str | os.PathLike[str]
    private_key: str | os.PathLike[str]
    client_ca: str | os.PathLike[str] | None = None


class LocalServer:
    """A `tritonserver` child process serving a model repository on this machine.

    Ports given as 0 are chosen free at start. Without `models`, every model of the
    repository is loaded (control mode `none`); with `models`, only those (mode `explicit`).
    `start()` returns once the server and every requested model are ready, or raises
    :class:`~offload.ServerStartError` carrying Triton's own error lines.
    """

    def __init__(
        self,
        repository: str | os.PathLike[str] = "model_repository",
        *,
        models: Sequence[str] | None = None,
        host: str = "127.0.0.1",
        grpc_port: int = 0,
        http_port: int = 0,
        metrics_port: int = 0,
        model_control_mode: str | None = None,
        log_verbose: int = 0,
        auto_complete_config: bool = False,
        exit_timeout: int = 5,
        startup_timeout: float = 300.0,
        extra_args: Sequence[str] = (),
        token: str | None = None,
        tls: ServerTLS | None = None,
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
        self.model_control_mode = mode
        self.host = host
        self._ports = {"grpc": grpc_port, "http": http_port, "metrics": metrics_port}
        self.log_verbose = log_verbose
        self.auto_complete_config = auto_complete_config
        self.exit_timeout = exit_timeout
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args)
        self._token = token or None
        self.tls = tls
        self._on_status = on_status
        self._on_log_line = on_log_line
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._log_tail: deque[str] = deque(maxlen=400)
        self._loaded: set[str] = set()
        self._failed: set[str] = set()
        self._reader: threading.Thread | None = None
        self._log_file: Path | None = None

    # ----------------------------------------------------------------- addresses
    @property
    def grpc_port(self) -> int:
        return self._ports["grpc"]

    @property
    def http_port(self) -> int:
        return self._ports["http"]

    @property
    def metrics_port(self) -> int:
        return self._ports["metrics"]

    @property
    def _connect_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def grpc_url(self) -> str:
        """`host:port` of the gRPC endpoint, as gRPC clients take it."""
        return f"{self._connect_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self._connect_host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._connect_host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def log_file(self) -> Path | None:
        """Triton's whole output, kept while the server runs."""
        return self._log_file

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

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
        self._choose_ports()
        self._workdir = Path(tempfile.mkdtemp(prefix="offload-triton-"))
        backends = assemble_backends(install, self._workdir / "backends")
        self._log_file = self._workdir / "tritonserver.log"
        command = [str(install.binary), *self._arguments(backends)]
        log.info("starting %s", self._redact(" ".join(command)))
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self._environment(install.library_dirs),
            # Its own process group, so that stop() reaches the Python-backend stubs too.
            start_new_session=True,
            # Linux ties the parent-death signal to the thread that forks: only the main
            # thread lives as long as this process.
            preexec_fn=_die_with_parent
            if threading.current_thread() is threading.main_thread() else None,
        )
        _running.add(self)
        self._reader = threading.Thread(target=self._read_output, daemon=True,
                                         name=f"tritonserver-{self._process.pid}-log")
        self._reader.start()
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `exit_timeout` + 5 s) and every
        process of its group, then remove its working folder. Safe to call twice."""
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
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            self._log_file = None

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
                backend = config.get("backend") or config.get("platform") or "-"
                max_batch = int(config.get("max_batch_size", 0))
            rows.append(ModelStatus(entry["name"], entry.get("version", "-"),
                                    entry.get("state", "UNKNOWN"), backend, max_batch,
                                    entry.get("reason", "")))
        return rows

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    # ------------------------------------------------------------------ internals
    def _arguments(self, backends: Path) -> list[str]:
        args = [
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--model-control-mode={self.model_control_mode}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
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
        if self._token:
            # Everything but health (probes stay open) needs the header; Triton compares
            # it with this value. See README "Guarantees" on where the value is visible.
            args += [f"--grpc-restricted-protocol={RESTRICTED}:{TOKEN_KEY}={self._token}",
                     f"--http-restricted-api={RESTRICTED}:{TOKEN_KEY}={self._token}"]
        if self.tls is not None:
            args += ["--grpc-use-ssl=true", f"--grpc-server-cert={self.tls.certificate}",
                     f"--grpc-server-key={self.tls.private_key}"]
            if self.tls.client_ca is not None:
                args += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={self.tls.client_ca}"]
        return args + self.extra_args

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

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

    def _choose_ports(self) -> None:
        flags = {"grpc": "--grpc-port", "http": "--http-port", "metrics": "--metrics-port"}
        taken: set[int] = set()
        for kind, port in self._ports.items():
            if port == 0:
                port = _free_port(self.host, taken)
            elif not _port_is_free(self.host, port):
                raise PortInUseError(
                    f"{kind} port {port} on {self.host} is already in use (another "
                    f"tritonserver?); stop that process or choose another with {flags[kind]} "
                    f"(0 picks a free one)"
                )
            taken.add(port)
            self._ports[kind] = port

    def _read_output(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        assert self._log_file is not None
        with open(self._log_file, "w", encoding="utf-8") as sink:
            for raw in self._process.stdout:
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
                self._reader and self._reader.join(timeout=5)
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

    def _http_json(self, method: str, path: str) -> list | dict:
        request = urllib.request.Request(f"{self.http_url}{path}", method=method,
                                         data=b"{}" if method == "POST" else None,
                                         headers={TOKEN_KEY: self._token} if self._token
                                         else {})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())


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


def _port_is_free(host: str, port: int) -> bool:
    """Whether nothing listens on the port. SO_REUSEADDR, as gRPC's own listener sets it:
    connections of a server that just died (TIME_WAIT) do not hold the port, so a server
    restarted on its old port starts; a live listener still refuses the bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str, avoid: set[int]) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
        if port not in avoid:
            return port


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL tritonserver if we die first, so a
    crashed test or job never leaves a server behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        server.stop()
