"""The worker processes: started once (spawn, like independent grid jobs on one node),
each an EventLoop, told to prepare a mode and to run a timed window together."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time

from offload_perf.gridsim.errors import GridSimError

#: Thread pools of libraries the workers may pull in, pinned to one thread like a grid slot.
WORKER_ENVIRONMENT = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                      "MKL_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _worker(index: int, connection, settings: dict) -> None:
    """A worker process: answers ("prepare", mode) and ("run", mode, start_at, duration)."""
    from offload_perf.gridsim.job import EventLoop

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
