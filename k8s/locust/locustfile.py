"""Locust load test of an offload (Triton) deployment, through the offload client.

    make load                                                   # embedded server, headless
    locust -f k8s/locust/locustfile.py --headless --host 127.0.0.1:8001 -u 16 -r 4 -t 60s \
        --models jet_tagger,calo_shower_generator --shape step --csv perf/results/load/load

The one locustfile of the project: `offload_perf.load` runs it, and the Kubernetes load test
(k8s/locust, kustomize) ships it as a ConfigMap. It is package data of `offload_deploy`, so
an installed offload has it too: `python -m offload_perf.load --locustfile` prints its path.

Each simulated user holds one `offload.Client` (its own gRPC channel, like one grid job)
and, back to back, sends one request to a model picked at random from `--models`, with
`--batch` rows of realistic inputs (the models' validation samples through the client's
preprocessing, `offload_perf.samples`; random inputs of the declared shapes for any other
model). Each inference is reported to locust's request event: request_type "grpc", name =
the model, response_time in ms, response_length = bytes of the output arrays, and the
offload exception if it failed.

Realistic inputs come from the validation samples of `--repository` (or $OFFLOAD_REPOSITORY;
default `model_repository` in the current directory); without them, random inputs.

Server address: `--host host:port` (also `grpc://host:port`, or several comma-separated:
the client balances and fails over between them), else $OFFLOAD_SERVERS.

Target rate (`--rate R`, or $OFFLOAD_LOAD_RATE): R requests/s in all, shared by the `-u`
users (each paced at R / u per second with locust's constant_pacing; a user whose answers
take longer than its period goes back to back). 0, the default: closed loop, no waiting.
The soak test (`python -m offload_perf.soak`) runs the constant shape at a rate.

Load shapes (`--shape`, or $OFFLOAD_LOAD_SHAPE), all within `--run-time` (default 60 s):
  constant  `-u` users, started at `-r` per second (locust's usual behaviour);
  step      `--steps` equal steps up to `-u` users, each held run-time / steps;
  spike     -u/4 users, a spike to `-u` users for the middle fifth, back to -u/4.
One shape class reads the option, so headless runs need no class picker.

gRPC under locust: locust runs users as gevent greenlets; grpcio must be switched to gevent
(`grpc.experimental.gevent.init_gevent()`) before any channel exists, which this file does at
import. Only the client's synchronous `infer()` is used (its `submit()` runs an asyncio
thread, which does not mix with gevent).
"""

# ruff: noqa: I001  (locust must be imported, i.e. gevent patch the stdlib, before grpc)
from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

from locust import LoadTestShape, User, constant_pacing, events, task
from locust.exception import StopUser

# After locust's gevent monkey-patching (its import above), before any gRPC object.
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import offload  # noqa: E402
from offload.endpoints import SERVERS_VARIABLE  # noqa: E402

DEFAULT_MODELS = "jet_tagger,jet_energy_regression,calo_shower_generator"
REPOSITORY = Path("model_repository")  # relative to where locust runs (a checkout's root)
SHAPES = ("constant", "step", "spike")


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    group = parser.add_argument_group("offload")
    group.add_argument("--models", default=DEFAULT_MODELS, env_var="OFFLOAD_LOAD_MODELS",
                       help="comma-separated models to load (default: the three physics "
                            "models)")
    group.add_argument("--batch", type=int, default=1, env_var="OFFLOAD_LOAD_BATCH",
                       help="rows per request")
    group.add_argument("--shape", default="constant", choices=SHAPES,
                       env_var="OFFLOAD_LOAD_SHAPE", help="load shape (see the locustfile)")
    group.add_argument("--steps", type=int, default=4, env_var="OFFLOAD_LOAD_STEPS",
                       help="steps of the step shape")
    group.add_argument("--rate", type=float, default=0.0, env_var="OFFLOAD_LOAD_RATE",
                       help="target requests/s over all -u users (0: back to back)")
    group.add_argument("--repository", default=str(REPOSITORY), env_var="OFFLOAD_REPOSITORY",
                       help="where the validation samples are (random inputs without it)")
    group.add_argument("--request-timeout", type=float, default=30.0,
                       env_var="OFFLOAD_LOAD_TIMEOUT", help="seconds per inference")


def servers_of(host: str | None) -> str:
    """`--host` (grpc:// and trailing slashes stripped) or $OFFLOAD_SERVERS."""
    raw = host or os.environ.get(SERVERS_VARIABLE) or ""
    addresses = [part.strip().removeprefix("grpc://").removeprefix("grpcs://").rstrip("/")
                 for part in raw.split(",") if part.strip()]
    if not addresses:
        raise offload.InvalidInputError(
            f"no server address: give --host HOST:PORT or set ${SERVERS_VARIABLE}")
    return ",".join(addresses)


class TritonUser(User):
    """One client (one channel) sending inference requests back to back."""

    # Closed loop: the next request as soon as the answer is in (like perf_analyzer);
    # with --rate, open-ish loop: each user paced at rate / users requests per second.
    _pacing: Callable[[User], float] | None = None

    def wait_time(self) -> float:
        if self._pacing is None:
            return 0.0
        return self._pacing(self)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.timeout = options.request_timeout if options else 30.0
        self.batch = options.batch if options else 1
        rate = float(getattr(options, "rate", 0.0) or 0.0) if options else 0.0
        if rate > 0:
            users = max(int(options.num_users or 1), 1)
            self._pacing = constant_pacing(users / rate)
        names = (options.models if options else DEFAULT_MODELS).split(",")
        repository = Path(options.repository if options else REPOSITORY)
        self.client = offload.Client(servers_of(self.host), timeout=self.timeout, retries=1)
        self.targets: list[tuple[str, offload.Model | None, dict | None, int]] = []
        for index, name in enumerate(n.strip() for n in names if n.strip()):
            started = time.perf_counter()
            try:
                from offload_perf.samples import model_inputs

                model = self.client.model(name)
                batch = min(self.batch, model.max_batch_size) if model.max_batch_size else 1
                inputs = model_inputs(model, batch, repository if repository.is_dir()
                                      else None, seed=index)
                self.targets.append((name, model, inputs, 0))
            except offload.OffloadError as error:
                # Reported once per user, and again on every pick of this model below.
                self._report(name, started, 0, error)
                self.targets.append((name, None, None, 0))

    def on_stop(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    @task
    def infer(self) -> None:
        if not self.targets:
            raise StopUser()
        name, model, inputs, _ = random.choice(self.targets)
        started = time.perf_counter()
        if model is None:  # could not be looked up at start: a failure each time, paced
            self._report(name, started, 0, offload.ModelNotFoundError(
                f"model '{name}' is not available on {self.host}", model=name))
            time.sleep(0.5)
            return
        try:
            outputs = model.infer(inputs, timeout=self.timeout)
        except offload.OffloadError as error:
            self._report(name, started, 0, error)
            return
        self._report(name, started, sum(v.nbytes for v in outputs.values()), None)

    def _report(self, name: str, started: float, length: int,
                error: BaseException | None) -> None:
        self.environment.events.request.fire(
            request_type="grpc", name=name,
            response_time=(time.perf_counter() - started) * 1e3,
            response_length=length, exception=error, context={"batch": self.batch})


class OffloadLoadShape(LoadTestShape):
    """constant, step or spike (--shape), scaled by -u, -r and --run-time."""

    use_common_options = True

    def tick(self):
        options = self.runner.environment.parsed_options
        users = max(int(options.num_users or 1), 1)
        rate = float(options.spawn_rate or users)
        total = float(options.run_time or 60)
        now = self.get_run_time()
        if now >= total:
            return None
        shape = getattr(options, "shape", "constant")
        if shape == "step":
            steps = max(int(options.steps), 1)
            step = min(int(now / (total / steps)), steps - 1)
            return math.ceil(users * (step + 1) / steps), rate
        if shape == "spike":
            base = max(users // 4, 1)
            in_spike = 0.4 * total <= now < 0.6 * total
            return (users, float(users)) if in_spike else (base, float(users))
        return users, rate
