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
time vs K) into --output. An unreachable server, or a model the repository lacks, stops the
run with a clear message and exit code 1; whatever was measured before a failure is written.
Invalid arguments (an unknown model or mode, a count below 1) are usage errors, exit code 2.

The package, one idea a module: `choices` (models and modes), `errors`, `runners` (the
models in-process or offloaded), `job` (a worker's event loop), `workers` (the processes),
`server_stats` (Triton's counters and the server's CPU), `results` (rows, ratios,
saturation), `report` (plot and summary), `measure` (the K x mode sweep), `cli`.
"""

from __future__ import annotations

from offload_perf.gridsim.choices import (
    DEFAULT_MODELS,
    DEFAULT_MODES,
    MODELS,
    MODES,
    OFFLOADED,
)
from offload_perf.gridsim.cli import add_arguments, main, run
from offload_perf.gridsim.errors import GridSimError
from offload_perf.gridsim.job import EventLoop, busy_work
from offload_perf.gridsim.report import plot
from offload_perf.gridsim.results import QUEUE_FLOOR_US, QUEUE_GROWTH, ratios, saturation, summarise
from offload_perf.gridsim.runners import BATCH_ROWS
from offload_perf.gridsim.server_stats import process_group_cpu
from offload_perf.gridsim.workers import WORKER_ENVIRONMENT, Workers

__all__ = [
    "BATCH_ROWS", "DEFAULT_MODELS", "DEFAULT_MODES", "MODELS", "MODES", "OFFLOADED",
    "QUEUE_FLOOR_US", "QUEUE_GROWTH", "WORKER_ENVIRONMENT", "EventLoop",
    "GridSimError", "Workers", "add_arguments", "busy_work", "main", "plot",
    "process_group_cpu", "ratios", "run", "saturation", "summarise",
]
