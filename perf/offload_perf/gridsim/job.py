"""One worker's job: an event loop of CPU work (the "reconstruction") plus inference, in a
mode (in_process, offloaded, offloaded_batched); counts and times out."""

from __future__ import annotations

import resource
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

import offload
from offload_perf.gridsim import runners
from offload_perf.gridsim.choices import OFFLOADED, SHOWER_MODEL


def busy_work(milliseconds: float, scratch: np.ndarray) -> np.ndarray:
    """`milliseconds` of this thread's CPU time spent on elementwise numpy math."""
    if milliseconds <= 0:
        return scratch
    end = time.thread_time() + milliseconds / 1e3
    while time.thread_time() < end:
        scratch = np.sqrt(np.abs(np.sin(scratch) * 1.0001 + 0.5))
    return scratch


def rusage_cpu() -> float:
    """This process's CPU time, user + system, over all its threads (getrusage)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class EventLoop:
    """One worker's job: events in, reconstruction and inference, counts out."""

    def __init__(self, settings: dict, index: int) -> None:
        from offload_perf.samples import jet_sample

        self.settings = settings
        self.models = settings["models"]
        self.constituents, self.jets = jet_sample(Path(settings["repository"]))
        self.rng = np.random.default_rng(1000 + index)
        self.shower_energies = None
        if SHOWER_MODEL in self.models:  # a fast-simulation job's particles
            sample = Path(settings["repository"]) / SHOWER_MODEL / "validation.npz"
            with np.load(sample, allow_pickle=False) as data:
                self.shower_energies = data["energy"].astype(np.float32)
        self.position = index * 97  # workers start at different events
        self.scratch = np.random.default_rng(index).random(4096)
        self.runners: dict[str, Any] | None = None
        self.client: offload.Client | None = None
        self.remote: dict[str, offload.Model] = {}

    def prepare(self, mode: str) -> None:
        if mode == "in_process" and self.runners is None:
            self.runners = runners.in_process(Path(self.settings["repository"]), self.models,
                                              self.settings.get("versions"))
        if mode in OFFLOADED and self.client is None:
            self.client, self.remote = runners.offloaded(
                self.settings["server"], self.models, self.settings["timeout"],
                self.settings.get("versions"))
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
        cpu_started, started = rusage_cpu(), time.perf_counter()
        n = len(self.jets)
        while time.monotonic() < until:
            t0 = time.perf_counter()
            rows = []
            b0 = time.thread_time()
            for _ in range(block):  # the event's jets, and its reconstruction
                rows.append((np.arange(per_event) + self.position) % n)
                self.position += per_event
                self.scratch = busy_work(self.settings["cpu_ms"], self.scratch)
            picked = np.concatenate(rows)
            constituents, jets = self.constituents[picked], self.jets[picked]
            busy += time.thread_time() - b0
            inputs = self._inputs(constituents, jets, block)
            t1 = time.perf_counter()
            if mode == "in_process":
                assert self.runners is not None
                outputs = {name: self.runners[name].run(inputs[name]) for name in self.models}
            else:  # every model's request in flight together, as examples/grid_job.py does
                futures = {name: self.remote[name].submit(inputs[name]) for name in self.models}
                outputs = {name: future.result() for name, future in futures.items()}
            runners.use(outputs)
            t2 = time.perf_counter()
            reco += t1 - t0
            infer += t2 - t1
            events += block
        return {"events": events, "seconds": time.perf_counter() - started,
                "cpu_seconds": rusage_cpu() - cpu_started, "busy_cpu_seconds": busy,
                "reco_seconds": reco, "inference_seconds": infer}

    def _inputs(self, constituents: np.ndarray, jets: np.ndarray, n_events: int
                ) -> dict[str, dict[str, np.ndarray]]:
        """Every model's inputs for a block of events: the jet models' from the block's jets
        at once (offload.physics.jets.inputs_for), the shower generator's per event."""
        from offload.physics.jets import inputs_for

        jet_models = [m for m in self.models if m != SHOWER_MODEL]
        inputs = inputs_for(jet_models, constituents, jets) if jet_models else {}
        if SHOWER_MODEL in self.models:
            showers = [self._shower_inputs() for _ in range(n_events)]
            inputs[SHOWER_MODEL] = {key: np.concatenate([s[key] for s in showers])
                                    for key in showers[0]}
        return inputs

    def _batched_loop(self, until: float) -> dict:
        """Acquire/produce: each event's rows go to an offload.Batcher per model at once
        (submit returns a future; the jet models' preprocessing runs per request, on the
        merged rows), and each event's results are collected `lag` events later."""
        per_event, lag = self.settings["jets_per_event"], self.settings["lag"]
        batchers = runners.batchers(self.remote, self.models)
        pending: deque[dict] = deque()
        events = 0
        reco = infer = busy = 0.0
        cpu_started, started = rusage_cpu(), time.perf_counter()
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
                    if SHOWER_MODEL in batchers:
                        futures[SHOWER_MODEL] = batchers[SHOWER_MODEL].submit(
                            self._shower_inputs())
                    pending.append(futures)
                    t2 = time.perf_counter()
                    reco += t1 - t0
                    infer += t2 - t1
                if len(pending) > lag or (not running and pending):
                    t2 = time.perf_counter()
                    done = {name: future.result() for name, future in pending.popleft().items()}
                    runners.use({**done.pop("jets", {}), **done})
                    infer += time.perf_counter() - t2
                    events += 1
        finally:
            for batcher in batchers.values():
                batcher.close()
        return {"events": events, "seconds": time.perf_counter() - started,
                "cpu_seconds": rusage_cpu() - cpu_started, "busy_cpu_seconds": busy,
                "reco_seconds": reco, "inference_seconds": infer}

    def _shower_inputs(self) -> dict[str, np.ndarray]:
        """`--showers-per-event` particles to simulate: energies from the generator's
        validation sample, and the latent and uniform noise the job draws for them."""
        n = self.settings["showers_per_event"]
        assert self.shower_energies is not None
        return {"energy": self.rng.choice(self.shower_energies, n).reshape(n, 1),
                "latent": self.rng.standard_normal((n, 8), np.float32),
                "uniform": self.rng.random((n, 576), np.float32)}

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
