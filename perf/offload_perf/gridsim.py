"""Grid-job simulator: K worker processes, each an event loop of CPU work plus inference (jet
tagging and regression; or fast simulation with `--models calo_shower_generator`), run once
with inference in-process and once offloaded to a Triton server.

    python -m offload_perf.gridsim                                # K = 1, 2, 4; embedded server
    offload gridsim --workers 1,2,4,8 --cpu-ms 5 --server gpu1.example.org:8001

Each worker (a process started with `spawn`, like independent grid jobs on one node) loops
over events. An event is `--jets-per-event` reconstructed large-radius jets from the tagger's
validation sample. Per event the worker does the "reconstruction":

  * `--cpu-ms` milliseconds of CPU time of busy numpy work (elementwise math on a 4096-float
    array, timed with the thread's CPU clock, so a busy machine stretches it as it would a
    real reconstruction), standing for everything a job does besides these models;
then, every `--block` events, the models' input preprocessing for those events' jets at once
(`offload.physics.jets.inputs_for`, the code a real job calls) and the inference of
`jet_tagger` and `jet_energy_regression`:

  * in-process: the repository's artifacts loaded in the worker by the server's own runner
    code (`load_checked` + the model's config, as `offload_server.backends.load_in_process`
    does) with one intra-op and one inter-op thread per worker, one model after the other;
  * offloaded: the offload client, both models' requests in flight together (`submit`), to
    the embedded server this tool starts on `--repository` or to `--server HOST:PORT`;
  * offloaded_batched (acquire/produce, one thread): every event's jets go at once to an
    `offload.Batcher(max_delay=None)` feeding both models (`submit` returns a future; 256
    jets are preprocessed per batch and sent in the models' request sizes), and each event's
    results are collected `--lag` events later; `--block` does not apply.

The job's own CPU per event is its workers' `getrusage` (every thread: the client's I/O
thread too); the models' share of it is that minus the simulated reconstruction (the busy
work and picking the event's jets, timed on the thread's CPU clock). The server's CPU per
event is that of the embedded server's process group over the window (or of
`--server-pgid`'s, for a server on this machine).

**Versions.** `--models jet_tagger:1` pins a model's version (`NAME:VERSION`), in-process
(that version folder) and offloaded (`client.model(name, version=...)`, Triton's statistics of
that version). Without one, both modes use the version a request naming none gets: the
highest the model's config serves (`offload_server.model_spec.default_version`; for a
`--server` elsewhere, whatever that server's highest ready version is).

All K workers start their timed window together and run for `--duration` seconds after a
warm-up. Reported per mode and K: events/s in total and per worker, the wall time per event
spent in reconstruction and in inference, and, offloaded, Triton's own statistics over the
window (deltas of its counters): queue and compute time per request and the mean batch the
dynamic batcher formed. The ratio is offloaded / in-process events/s at the same K.

**Saturation criterion.** The server "sustains" K workers while its queue time per request
(over both models, weighted by requests) stays at most twice its value at the smallest K
measured, or under 100 µs (noise floor). The first K above that is where the queue grows;
the figure reported is the largest K before it. On a CPU-only machine that shares its cores
between the workers and the server this comes early; against a GPU server, run this tool on
a CPU node with `--server` and a `--workers` list up to the node's core count (and several
nodes for more), and read the queue-time column.

Writes gridsim.json (with the machine) and gridsim.png (events/s vs K for both modes; queue
time vs K) into --output. An unreachable server or an unknown model stops the run with a
clear message and exit code 1; whatever was measured before a failure is written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import offload
from offload.endpoints import SERVERS_VARIABLE

MODELS = ("jet_tagger", "jet_energy_regression", "calo_shower_generator")
DEFAULT_MODELS = ("jet_tagger", "jet_energy_regression")
MODES = ("in_process", "offloaded", "offloaded_batched")
DEFAULT_MODES = ("in_process", "offloaded")
OFFLOADED = ("offloaded", "offloaded_batched")
#: In-process: one intra-op and one inter-op thread per model and worker, in the parameter
#: names each CPU runner reads (those of Triton's native backends).
ONE_THREAD = {"intra_op_thread_count": "1", "inter_op_thread_count": "1",
              "TF_NUM_INTRA_THREADS": "1", "TF_NUM_INTER_THREADS": "1",
              "INTRA_OP_THREAD_COUNT": "1", "INTER_OP_THREAD_COUNT": "1"}
#: Thread pools of libraries the workers may pull in, pinned to one thread like a grid slot.
WORKER_ENVIRONMENT = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                      "MKL_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
#: offloaded_batched: jets the Batcher of a jet model merges and preprocesses at once.
BATCH_ROWS = 256
QUEUE_GROWTH = 2.0  # queue time per request above this multiple of the smallest K's ...
QUEUE_FLOOR_US = 100.0  # ... and above this floor: the server no longer keeps up


class GridSimError(offload.OffloadError):
    """The simulation could not go on (a worker failed, a server went away)."""


# ---------------------------------------------------------------------------- the worker
def busy_work(milliseconds: float, scratch: np.ndarray) -> np.ndarray:
    """`milliseconds` of this thread's CPU time spent on elementwise numpy math."""
    if milliseconds <= 0:
        return scratch
    end = time.thread_time() + milliseconds / 1e3
    while time.thread_time() < end:
        scratch = np.sqrt(np.abs(np.sin(scratch) * 1.0001 + 0.5))
    return scratch


class EventLoop:
    """One worker's job: events in, reconstruction and inference, counts out."""

    def __init__(self, settings: dict, index: int) -> None:
        from offload_perf.samples import jet_sample

        self.settings = settings
        self.models = settings["models"]
        self.versions: dict[str, str | None] = settings.get("versions", {})
        self.constituents, self.jets = jet_sample(Path(settings["repository"]))
        self.rng = np.random.default_rng(1000 + index)
        self.shower_energies = None
        if "calo_shower_generator" in self.models:  # a fast-simulation job's particles
            sample = Path(settings["repository"]) / "calo_shower_generator" / "validation.npz"
            with np.load(sample, allow_pickle=False) as data:
                self.shower_energies = data["energy"].astype(np.float32)
        self.position = index * 97  # workers start at different events
        self.scratch = np.random.default_rng(index).random(4096)
        self.runners: dict | None = None
        self.client: offload.Client | None = None
        self.remote: dict = {}

    def prepare(self, mode: str) -> None:
        if mode == "in_process" and self.runners is None:
            from offload_server.backends.triton_model import load_checked
            from offload_server.model_spec import default_version, spec_from_folder

            self.runners = {}
            for name in self.models:
                folder = Path(self.settings["repository"]) / name
                spec = spec_from_folder(folder)
                spec = replace(spec, parameters={**spec.parameters, **ONE_THREAD})
                version = self.versions.get(name) or default_version(folder)
                self.runners[name] = load_checked(folder, version, spec)
        if mode in OFFLOADED and self.client is None:
            self.client = offload.Client(self.settings["server"],
                                         timeout=self.settings["timeout"], retries=2)
            self.remote = {name: self.client.model(name, version=self.versions.get(name))
                           for name in self.models}
        self._loop(mode, time.monotonic() + self.settings["warmup"])

    def run(self, mode: str, start_at: float, duration: float) -> dict:
        time.sleep(max(0.0, start_at - time.monotonic()))
        return self._loop(mode, start_at + duration)

    def _loop(self, mode: str, until: float) -> dict:
        if mode == "offloaded_batched":
            return self._batched_loop(until)
        block, per_event = self.settings["block"], self.settings["jets_per_event"]
        events = 0
        reco = infer = busy = 0.0
        cpu_started, started = _rusage_cpu(), time.perf_counter()
        n = len(self.jets)
        while time.monotonic() < until:
            t0 = time.perf_counter()
            rows = []
            b0 = time.thread_time()
            for _ in range(block):  # the event's jets, and its reconstruction
                rows.append((np.arange(per_event) + self.position) % n)
                self.position += per_event
                self.scratch = busy_work(self.settings["cpu_ms"], self.scratch)
            rows = np.concatenate(rows)
            constituents, jets = self.constituents[rows], self.jets[rows]
            busy += time.thread_time() - b0
            inputs = self._inputs(constituents, jets, block)
            t1 = time.perf_counter()
            if mode == "in_process":
                outputs = {name: self.runners[name].run(inputs[name]) for name in self.models}
            else:  # every model's request in flight together, as examples/grid_job.py does
                futures = {name: self.remote[name].submit(inputs[name]) for name in self.models}
                outputs = {name: future.result() for name, future in futures.items()}
            _use(outputs)
            t2 = time.perf_counter()
            reco += t1 - t0
            infer += t2 - t1
            events += block
        return {"events": events, "seconds": time.perf_counter() - started,
                "cpu_seconds": _rusage_cpu() - cpu_started, "busy_cpu_seconds": busy,
                "reco_seconds": reco, "inference_seconds": infer}

    def _inputs(self, constituents: np.ndarray, jets: np.ndarray, n_events: int
                ) -> dict[str, dict[str, np.ndarray]]:
        """Every model's inputs for a block of events: the jet models' from the block's jets
        at once (offload.physics.jets.inputs_for), the shower generator's per event."""
        from offload.physics.jets import inputs_for

        jet_models = [m for m in self.models if m != "calo_shower_generator"]
        inputs = inputs_for(jet_models, constituents, jets) if jet_models else {}
        if "calo_shower_generator" in self.models:
            showers = [self._shower_inputs() for _ in range(n_events)]
            inputs["calo_shower_generator"] = {key: np.concatenate([s[key] for s in showers])
                                               for key in showers[0]}
        return inputs

    def _batched_loop(self, until: float) -> dict:
        """Acquire/produce: each event's rows go to an offload.Batcher per model at once
        (submit returns a future; the jet models' preprocessing runs per request, on the
        merged rows), and each event's results are collected `lag` events later."""
        from collections import deque

        from offload.batching import Batcher
        from offload.physics.jets import inputs_for

        per_event, lag = self.settings["jets_per_event"], self.settings["lag"]
        # One Batcher feeds both jet models from each event's jets (their shared features
        # computed once per BATCH_ROWS jets); the shower generator gets its own.
        jet_models = [m for m in self.models if m != "calo_shower_generator"]
        batchers = {}
        if jet_models:
            batchers["jets"] = Batcher(
                [self.remote[m] for m in jet_models], max_delay=None,
                max_batch_size=BATCH_ROWS,
                prepare=lambda raw: inputs_for(jet_models, raw["constituents"], raw["jets"]))
        if "calo_shower_generator" in self.models:
            batchers["calo_shower_generator"] = Batcher(self.remote["calo_shower_generator"],
                                                        max_delay=None)
        pending: deque[dict] = deque()
        events = 0
        reco = infer = busy = 0.0
        cpu_started, started = _rusage_cpu(), time.perf_counter()
        n = len(self.jets)
        try:
            while True:
                running = time.monotonic() < until
                if not running and not pending:
                    break
                if running:
                    t0 = time.perf_counter()
                    b0 = time.thread_time()
                    rows = (np.arange(per_event) + self.position) % n
                    self.position += per_event
                    constituents, jets = self.constituents[rows], self.jets[rows]
                    self.scratch = busy_work(self.settings["cpu_ms"], self.scratch)
                    busy += time.thread_time() - b0
                    t1 = time.perf_counter()
                    futures = {}
                    if "jets" in batchers:
                        futures["jets"] = batchers["jets"].submit(constituents=constituents,
                                                                  jets=jets)
                    if "calo_shower_generator" in batchers:
                        futures["calo_shower_generator"] = batchers[
                            "calo_shower_generator"].submit(self._shower_inputs())
                    pending.append(futures)
                    t2 = time.perf_counter()
                    reco += t1 - t0
                    infer += t2 - t1
                if len(pending) > lag or (not running and pending):
                    t2 = time.perf_counter()
                    done = {name: future.result() for name, future in pending.popleft().items()}
                    _use({**done.pop("jets", {}), **done})
                    infer += time.perf_counter() - t2
                    events += 1
        finally:
            for batcher in batchers.values():
                batcher.close()
        return {"events": events, "seconds": time.perf_counter() - started,
                "cpu_seconds": _rusage_cpu() - cpu_started, "busy_cpu_seconds": busy,
                "reco_seconds": reco, "inference_seconds": infer}

    def _shower_inputs(self) -> dict[str, np.ndarray]:
        """`--showers-per-event` particles to simulate: energies from the generator's
        validation sample, and the latent and uniform noise the job draws for them."""
        n = self.settings["showers_per_event"]
        return {"energy": self.rng.choice(self.shower_energies, n).reshape(n, 1),
                "latent": self.rng.standard_normal((n, 8), np.float32),
                "uniform": self.rng.random((n, 576), np.float32)}

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def _use(outputs: dict[str, dict[str, np.ndarray]]) -> None:
    """The job uses its answers (and a model returning NaN stops the run)."""
    for result in outputs.values():
        for value in result.values():
            if not np.all(np.isfinite(value)):
                raise GridSimError("a model returned non-finite values")


def _rusage_cpu() -> float:
    """This process's CPU time, user + system, over all its threads (getrusage)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_group_cpu(pgid: int) -> float | None:
    """CPU seconds (user + system) of the live processes of process group `pgid` (the
    embedded server: tritonserver and its backend stubs), from /proc; None off Linux."""
    tick = os.sysconf("SC_CLK_TCK")
    total, seen = 0.0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            seen = True
            total += (int(fields[11]) + int(fields[12])) / tick
    return total if seen else None


def _worker(index: int, connection, settings: dict) -> None:
    """A worker process: answers ("prepare", mode) and ("run", mode, start_at, duration)."""
    loop = None
    try:
        while True:
            command = connection.recv()
            if command[0] == "stop":
                break
            try:
                if loop is None:
                    loop = EventLoop(settings, index)
                if command[0] == "prepare":
                    loop.prepare(command[1])
                    connection.send(("ok", None))
                else:
                    connection.send(("ok", loop.run(*command[1:])))
            except Exception as error:  # reported to the parent, which stops the run
                connection.send(("error", f"worker {index}: {type(error).__name__}: {error}"))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        if loop is not None:
            loop.close()


class Workers:
    """Worker processes started once (spawn) and reused for every K and mode."""

    def __init__(self, count: int, settings: dict) -> None:
        context = multiprocessing.get_context("spawn")
        self.connections, self.processes = [], []
        saved = {key: os.environ.get(key) for key in WORKER_ENVIRONMENT}
        os.environ.update(WORKER_ENVIRONMENT)  # inherited by the children only
        try:
            for index in range(count):
                mine, theirs = context.Pipe()
                process = context.Process(target=_worker, args=(index, theirs, settings),
                                          name=f"gridsim-worker-{index}", daemon=True)
                process.start()
                self.connections.append(mine)
                self.processes.append(process)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        self.prepared: set[tuple[int, str]] = set()

    def _ask(self, indices: list[int], command: tuple, timeout: float) -> list:
        for index in indices:
            self.connections[index].send(command)
        answers = []
        deadline = time.monotonic() + timeout
        for index in indices:
            connection = self.connections[index]
            if not connection.poll(max(0.0, deadline - time.monotonic())):
                raise GridSimError(f"worker {index} did not answer {command[0]!r} within "
                                   f"{timeout:.0f} s")
            try:
                status, value = connection.recv()
            except EOFError:
                raise GridSimError(f"worker {index} died (exit code "
                                   f"{self.processes[index].exitcode})") from None
            if status == "error":
                raise GridSimError(value)
            answers.append(value)
        return answers

    def prepare(self, k: int, mode: str, timeout: float) -> None:
        todo = [i for i in range(k) if (i, mode) not in self.prepared]
        if todo:
            self._ask(todo, ("prepare", mode), timeout)
            self.prepared.update((i, mode) for i in todo)

    def run(self, k: int, mode: str, duration: float, timeout: float) -> list[dict]:
        start_at = time.monotonic() + 0.3  # CLOCK_MONOTONIC: the same clock in every process
        return self._ask(list(range(k)), ("run", mode, start_at, duration),
                         duration + timeout)

    def close(self) -> None:
        for connection in self.connections:
            with contextlib.suppress(OSError, BrokenPipeError):
                connection.send(("stop",))
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)


# ---------------------------------------------------------------------------- the parent
def _server_counters(models: dict[str, offload.Model]) -> dict[str, tuple]:
    """Cumulative (requests, executions, inferences, queue µs, compute infer µs) per model."""
    from offload_perf.options import server_totals

    counters = {}
    for name, model in models.items():
        row = server_totals(model)  # every version's, for a model named without one
        if row is None:
            counters[name] = (0, 0, 0, 0.0, 0.0)
            continue
        n = row.requests
        counters[name] = (n, row.executions, row.inferences, row.queue_us * n,
                          (row.compute_input_us + row.compute_infer_us
                           + row.compute_output_us) * n)
    return counters


def _server_window(before: dict, after: dict) -> dict:
    window = {}
    for name in after:
        requests, executions, inferences, queue, compute = (
            a - b for a, b in zip(after[name], before[name], strict=True))
        window[name] = {"requests": requests, "executions": executions,
                        "inferences": inferences,
                        "queue_us_per_request": queue / requests if requests else None,
                        "compute_us_per_request": compute / requests if requests else None,
                        "mean_batch": inferences / executions if executions else None,
                        "_queue": queue, "_compute": compute}
    return window


def summarise(k: int, mode: str, results: list[dict], server: dict | None,
              server_cpu_seconds: float | None = None) -> dict:
    events = sum(r["events"] for r in results)
    cpu = sum(r["cpu_seconds"] for r in results)
    busy = sum(r.get("busy_cpu_seconds", 0.0) for r in results)
    per_worker = [r["events"] / r["seconds"] for r in results]
    row = {"workers": k, "mode": mode, "events": events,
           "events_per_second": float(sum(per_worker)),
           "events_per_second_per_worker": float(np.mean(per_worker)),
           "per_worker": [round(x, 2) for x in per_worker],
           "reco_ms_per_event": 1e3 * sum(r["reco_seconds"] for r in results) / max(events, 1),
           "inference_ms_per_event": 1e3 * sum(r["inference_seconds"] for r in results)
           / max(events, 1),
           "cpu_share": float(np.mean([r["cpu_seconds"] / r["seconds"] for r in results])),
           # The job's own CPU (its workers' getrusage: every thread), per event; and the
           # part beyond the simulated reconstruction: what the models cost the job.
           "job_cpu_ms_per_event": 1e3 * cpu / max(events, 1),
           "job_model_cpu_us_per_event": 1e6 * (cpu - busy) / max(events, 1),
           "server_cpu_ms_per_event": (1e3 * server_cpu_seconds / max(events, 1)
                                       if server_cpu_seconds is not None else None)}
    if server is not None:
        requests = sum(s["requests"] for s in server.values())
        queue = sum(s.pop("_queue") for s in server.values())
        compute = sum(s.pop("_compute") for s in server.values())
        row["server"] = server
        row["queue_us_per_request"] = queue / requests if requests else None
        row["server_us_per_request"] = (queue + compute) / requests if requests else None
        row["compute_us_per_request"] = compute / requests if requests else None
    return row


def saturation(rows: list[dict]) -> dict:
    """Where the server's queue time per request starts to grow (see the module doc)."""
    served = sorted((r for r in rows if r["mode"] == "offloaded"
                     and r.get("queue_us_per_request") is not None), key=lambda r: r["workers"])
    criterion = (f"queue time per request > {QUEUE_GROWTH:g} x its value at the smallest K "
                 f"and > {QUEUE_FLOOR_US:g} us")
    if not served:
        return {"criterion": criterion, "baseline_queue_us": None,
                "first_growing_workers": None, "sustained_workers": None}
    baseline = served[0]["queue_us_per_request"]
    threshold = max(QUEUE_GROWTH * baseline, QUEUE_FLOOR_US)
    growing = next((r["workers"] for r in served if r["queue_us_per_request"] > threshold),
                   None)
    sustained = max((r["workers"] for r in served
                     if growing is None or r["workers"] < growing), default=None)
    return {"criterion": criterion, "baseline_queue_us": baseline,
            "threshold_us": threshold, "first_growing_workers": growing,
            "sustained_workers": sustained,
            "reached_in_sweep": growing is not None}


def ratios(rows: list[dict]) -> list[dict]:
    """Per K: offloaded / in-process events/s, and each mode's scaling efficiency (events/s
    at K over K x the per-worker rate at the smallest K: 1.0 = perfect scaling)."""
    by = {(r["workers"], r["mode"]): r for r in rows}
    ks = sorted({r["workers"] for r in rows})
    out = []
    for k in ks:
        entry: dict = {"workers": k}
        if (k, "in_process") in by and (k, "offloaded") in by:
            entry["offloaded_over_in_process"] = (by[k, "offloaded"]["events_per_second"]
                                                  / by[k, "in_process"]["events_per_second"])
        for mode in OFFLOADED:  # how much less CPU the models cost the job offloaded
            if (k, "in_process") in by and (k, mode) in by:
                entry[f"job_model_cpu_in_process_over_{mode}"] = (
                    by[k, "in_process"]["job_model_cpu_us_per_event"]
                    / max(by[k, mode]["job_model_cpu_us_per_event"], 1e-9))
        for mode in MODES:
            first = next((by[j, mode] for j in ks if (j, mode) in by), None)
            if (k, mode) in by and first is not None:
                entry[f"{mode}_scaling"] = (by[k, mode]["events_per_second"]
                                            / (k * first["events_per_second_per_worker"]))
        out.append(entry)
    return out


def plot(record: dict, path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, settings = record["rows"], record["settings"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, colour in zip(MODES, ("tab:blue", "tab:orange", "tab:green"), strict=True):
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["workers"])
        if not mine:
            continue
        ks = [r["workers"] for r in mine]
        left.plot(ks, [r["events_per_second"] for r in mine], marker="o", color=colour,
                  label=f"{mode.replace('_', '-')}: total")
        left.plot(ks, [r["events_per_second_per_worker"] for r in mine], marker="x",
                  linestyle="--", color=colour, label=f"{mode.replace('_', '-')}: per worker")
    left.set_xticks(settings_ks := sorted({r["workers"] for r in rows}))
    left.set_xlabel("worker processes K")
    left.set_ylabel("events / s")
    left.set_title(f"grid job: {settings['cpu_ms']:g} ms CPU + inference per event")
    left.legend(fontsize=8)
    served = sorted((r for r in rows if r["mode"] == "offloaded" and "server" in r),
                    key=lambda r: r["workers"])
    if served:
        ks = [r["workers"] for r in served]
        for name in settings["models"]:
            right.plot(ks, [(r["server"][name]["queue_us_per_request"] or 0) / 1e3
                            for r in served], marker="o", label=f"{name}: queue")
            right.plot(ks, [(r["server"][name]["compute_us_per_request"] or 0) / 1e3
                            for r in served], marker=".", linestyle=":",
                       label=f"{name}: compute")
        threshold = record["saturation"].get("threshold_us")
        if threshold:
            right.axhline(threshold / 1e3, color="grey", linestyle="--", linewidth=1,
                          label="queue-growth threshold")
        right.set_xticks(settings_ks)
        right.set_xlabel("worker processes K")
        right.set_ylabel("ms per request (server side)")
        right.set_title("Triton queue and compute time per request")
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", default="1,2,4",
                        help="comma-separated worker counts K to sweep (default 1,2,4)")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES),
                        help="comma-separated: in_process, offloaded (a request per model "
                             "per --block events), offloaded_batched (acquire/produce: every "
                             "event submitted to an offload.Batcher, collected --lag events "
                             "later); default in_process,offloaded")
    parser.add_argument("--server", metavar="HOST:PORT",
                        help="offload to this server instead of starting an embedded one "
                             f"(also ${SERVERS_VARIABLE})")
    parser.add_argument("--server-pgid", type=int, default=None, metavar="PGID",
                        help="with --server on this machine: its process group (e.g. the pid "
                             "of `offload serve`'s tritonserver), to report its CPU per event")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"),
                        help="the models (in-process, embedded server) and the event sample")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"the per-event models, a subset of {', '.join(MODELS)} "
                             "(calo_shower_generator: a fast-simulation job); NAME:VERSION "
                             "pins a version (e.g. jet_tagger:1), else the highest served")
    parser.add_argument("--cpu-ms", type=float, default=2.0,
                        help="CPU time of busy work per event, besides preprocessing (ms)")
    parser.add_argument("--jets-per-event", type=int, default=2)
    parser.add_argument("--showers-per-event", type=int, default=4,
                        help="particles simulated per event by calo_shower_generator")
    parser.add_argument("--block", type=int, default=1, help="events per inference call")
    parser.add_argument("--lag", type=int, default=256,
                        help="offloaded_batched: events between submitting an event and "
                             "collecting its results (default 256)")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds each (K, mode) point is measured")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per worker and mode")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds for a call to the server (and to reach it)")
    parser.add_argument("--output", type=Path, default=None,
                        help="folder for gridsim.json/.png (default perf/results)")


def parse_models(text: str) -> dict[str, str | None]:
    """`name[:version],...` -> {name: version or None}, in order."""
    models: dict[str, str | None] = {}
    for entry in (e.strip() for e in text.split(",") if e.strip()):
        name, _, version = entry.partition(":")
        if version and not version.isdigit():
            raise offload.InvalidInputError(f"--models: {entry!r}: a version is a number, "
                                            "as in jet_tagger:1")
        models[name.strip()] = version or None
    return models


def _parse(args: argparse.Namespace) -> tuple[list[int], list[str], list[str]]:
    try:
        ks = sorted({int(k) for k in str(args.workers).split(",") if k.strip()})
    except ValueError:
        raise offload.InvalidInputError(f"--workers takes comma-separated integers, got "
                                        f"{args.workers!r}") from None
    if not ks or ks[0] < 1:
        raise offload.InvalidInputError(f"--workers needs counts >= 1, got {args.workers!r}")
    modes = [m.strip().replace("-", "_") for m in args.modes.split(",") if m.strip()]
    models = list(parse_models(args.models))
    bad_modes = [m for m in modes if m not in MODES]
    unknown = [m for m in models if m not in MODELS]
    if bad_modes or not modes:
        raise offload.InvalidInputError(f"--modes: unknown {bad_modes or modes}; choose from "
                                        f"{', '.join(MODES)}")
    if unknown or not models:
        raise offload.ModelNotFoundError(
            f"unknown model(s) {unknown or models} for the grid-job simulator: its events "
            f"feed {', '.join(MODELS)} (the jet models, whose inputs offload.physics.jets "
            "computes, and the shower generator)")
    if args.cpu_ms < 0 or args.jets_per_event < 1 or args.showers_per_event < 1 or \
            args.block < 1 or args.duration <= 0 or args.lag < 0:
        raise offload.InvalidInputError("--cpu-ms >= 0, --jets-per-event >= 1, "
                                        "--showers-per-event >= 1, --block >= 1, --lag >= 0 "
                                        "and --duration > 0 are needed")
    return ks, modes, models


def run(args: argparse.Namespace) -> int:
    from offload_perf.options import RESULTS, machine

    ks, modes, models = _parse(args)
    versions = parse_models(args.models)
    output = args.output or RESULTS
    repository = args.repository.resolve()
    for name in models:
        if not (repository / name / "config.pbtxt").is_file():
            raise offload.ModelNotFoundError(
                f"model '{name}' is not in the repository {repository} (no "
                f"{name}/config.pbtxt)", model=name)
        if versions[name] is not None and not (repository / name / versions[name]).is_dir():
            raise offload.ModelNotFoundError(
                f"model '{name}' has no version {versions[name]} in {repository}", model=name)
    resolved = {name: versions[name] or _default_version(repository / name)
                for name in models}
    address = args.server or os.environ.get(SERVERS_VARIABLE)
    record = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "settings": {
        "workers": ks, "modes": modes, "models": models, "cpu_ms": args.cpu_ms,
        "jets_per_event": args.jets_per_event, "showers_per_event": args.showers_per_event,
        "block": args.block, "lag": args.lag, "duration_s": args.duration,
        "warmup_s": args.warmup,
        "versions": {name: {"requested": versions[name], "in_process": resolved[name]}
                     for name in models},
        "repository": str(args.repository),
        "in_process_threads": "1 intra-op, 1 inter-op per model and worker"},
        "server": None, "rows": [], "complete": False, "error": None}
    rows: list[dict] = record["rows"]
    with contextlib.ExitStack() as stack:
        offloading = any(m in OFFLOADED for m in modes)
        server_pgid = args.server_pgid
        if offloading and not address:
            from offload_server import LocalServer

            print(f"starting the embedded server on {repository} ...", file=sys.stderr,
                  flush=True)
            server = stack.enter_context(LocalServer(repository, models=models))
            address = server.grpc_url
            server_pgid = server.pid  # tritonserver leads its own process group
            record["server"] = f"embedded tritonserver at {address} (same machine)"
        elif offloading:
            record["server"] = address
        served: dict[str, offload.Model] = {}
        if offloading:
            client = stack.enter_context(offload.Client(address, timeout=args.timeout,
                                                        retries=1))
            try:
                served = {name: client.model(name, version=versions[name]) for name in models}
            except offload.ModelNotFoundError:
                raise
            except offload.OffloadError as error:
                raise GridSimError(f"cannot reach the server at {address}: {error}") from error
        settings = {"repository": str(repository), "server": address, "models": models,
                    "versions": versions,
                    "cpu_ms": args.cpu_ms, "jets_per_event": args.jets_per_event,
                    "showers_per_event": args.showers_per_event, "block": args.block,
                    "lag": args.lag,
                    "warmup": args.warmup, "timeout": args.timeout}
        workers = Workers(max(ks), settings)
        stack.callback(workers.close)
        try:
            _sweep(workers, ks, modes, served, args, rows, server_pgid)
            record["complete"] = True
        except (offload.OffloadError, KeyboardInterrupt) as error:
            record["error"] = str(error) or type(error).__name__
            raise
        finally:
            record["saturation"] = saturation(rows)
            record["ratios"] = ratios(rows)
            if rows:
                output.mkdir(parents=True, exist_ok=True)
                (output / "gridsim.json").write_text(json.dumps(record, indent=2))
                drawn = plot(record, output / "gridsim.png")
                print(f"wrote {output / 'gridsim.json'}" + (", gridsim.png" if drawn else "")
                      + ("" if record["complete"] else " (partial: the run stopped early)"),
                      file=sys.stderr)
    _report(record)
    return 0


def _default_version(folder: Path) -> str:
    from offload_server.model_spec import default_version

    return default_version(folder)


def _sweep(workers: Workers, ks: list[int], modes: list[str],
           served: dict[str, offload.Model], args: argparse.Namespace,
           rows: list[dict], server_pgid: int | None = None) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    prepare_timeout = 120.0 + 10 * max(ks)  # spawn + importing TensorFlow on a busy node
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  transient=False, console=_console()) as progress:
        task = progress.add_task("grid-job simulator", total=len(ks) * len(modes))
        for k in ks:
            for mode in modes:
                progress.update(task, description=f"K={k} {mode}: warming up")
                workers.prepare(k, mode, prepare_timeout)
                before = _server_counters(served) if mode in OFFLOADED else None
                cpu_before = (process_group_cpu(server_pgid)
                              if mode in OFFLOADED and server_pgid else None)
                progress.update(task, description=f"K={k} {mode}: measuring")
                results = workers.run(k, mode, args.duration, args.timeout + 30)
                window = (_server_window(before, _server_counters(served))
                          if mode in OFFLOADED else None)
                cpu_after = process_group_cpu(server_pgid) if cpu_before is not None else None
                server_cpu = (cpu_after - cpu_before
                              if cpu_before is not None and cpu_after is not None else None)
                row = summarise(k, mode, results, window, server_cpu)
                rows.append(row)
                queue = row.get("queue_us_per_request")
                progress.console.print(
                    f"K={k} {mode:10s} {row['events_per_second']:8.1f} events/s "
                    f"({row['events_per_second_per_worker']:.1f} per worker; reco "
                    f"{row['reco_ms_per_event']:.2f} ms + inference "
                    f"{row['inference_ms_per_event']:.2f} ms per event; job CPU "
                    f"{row['job_cpu_ms_per_event']:.3f} ms/event, of which models "
                    f"{row['job_model_cpu_us_per_event']:.0f} us)"
                    + (f"; server queue {queue:.0f} us/request" if queue is not None else "")
                    + (f"; server CPU {row['server_cpu_ms_per_event']:.3f} ms/event"
                       if row["server_cpu_ms_per_event"] is not None else ""))
                progress.advance(task)


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _report(record: dict) -> None:
    for ratio in record["ratios"]:
        if "offloaded_over_in_process" in ratio:
            print(f"K={ratio['workers']}: offloaded / in-process = "
                  f"{ratio['offloaded_over_in_process']:.2f}")
        for mode in OFFLOADED:
            key = f"job_model_cpu_in_process_over_{mode}"
            if key in ratio:
                print(f"K={ratio['workers']}: the models cost the job {ratio[key]:.1f}x less "
                      f"CPU per event {mode.replace('_', ' ')} than in-process")
    sat = record["saturation"]
    if sat["baseline_queue_us"] is not None:
        if sat["reached_in_sweep"]:
            print(f"server queue time grows from K={sat['first_growing_workers']} "
                  f"({sat['criterion']}); one server sustains {sat['sustained_workers']} "
                  "worker(s) here")
        else:
            print(f"server queue time did not grow within the sweep ({sat['criterion']}): "
                  f"one server sustains at least {sat['sustained_workers']} worker(s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except offload.OffloadError as error:
        print(f"gridsim: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
