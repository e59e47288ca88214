"""`offload.Batcher`: merge many small concurrent calls into server-sized batches.

A reconstruction job with many threads (or an event loop handing out jets one by one)
calls `batcher.infer(...)` with a few rows each; the batcher collects calls until
`max_batch_size` rows are waiting or `max_delay` has passed since the first, sends them as
one request, and hands every caller its own rows of the result. Like Triton's dynamic
batcher, but before the network: fewer, larger messages.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from offload import tensors
from offload.client import Model
from offload.errors import InvalidInputError, OffloadError


@dataclass
class _Pending:
    prepared: tensors.Prepared
    future: concurrent.futures.Future
    shape_key: tuple


class Batcher:
    """Coalesces concurrent calls to one batching model. Thread-safe; use as a context
    manager or call :meth:`close` (which sends what is waiting)."""

    def __init__(self, model: Model, *, max_batch_size: int | None = None,
                 max_delay: float = 0.002, timeout: float | None = None) -> None:
        if model.max_batch_size <= 0:
            raise InvalidInputError(f"model '{model.name}' does not batch (max_batch_size 0): "
                                    "there is nothing to coalesce", model=model.name)
        self.model = model
        self.max_batch_size = min(max_batch_size or model.max_batch_size, model.max_batch_size)
        self.max_delay = max_delay
        self.timeout = timeout
        self._queue: list[_Pending] = []
        self._rows = 0
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"offload-batcher-{model.name}")
        self._thread.start()

    def infer(self, inputs: Mapping[str, Any] | None = None, /, **named: Any
              ) -> dict[str, np.ndarray]:
        return self.submit(inputs, **named).result()

    def submit(self, inputs: Mapping[str, Any] | None = None, /, **named: Any
               ) -> concurrent.futures.Future:
        """Queue one call (checked now: bad input raises here); its future gets exactly
        this call's rows of the merged result, or the merged request's error."""
        prepared = self.model._prepare(self.model, {**(inputs or {}), **named})
        future: concurrent.futures.Future = concurrent.futures.Future()
        key = tuple(prepared.arrays[t.name].shape[1:] for t in self.model.inputs)
        with self._condition:
            if self._closed:
                raise OffloadError("this Batcher is closed")
            self._queue.append(_Pending(prepared, future, key))
            self._rows += prepared.batch or 1
            self._condition.notify()
        return future

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._thread.join()

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _loop(self) -> None:
        while True:
            with self._condition:
                while not self._queue and not self._closed:
                    self._condition.wait()
                if not self._queue:
                    return  # closed and drained
                deadline = time.monotonic() + self.max_delay
                while (self._rows < self.max_batch_size and not self._closed
                       and (left := deadline - time.monotonic()) > 0):
                    self._condition.wait(left)
                batch, self._queue, self._rows = self._take()
            self._send(batch)

    def _take(self) -> tuple[list[_Pending], list[_Pending], int]:
        """Up to max_batch_size rows of calls sharing the first call's shape, in order."""
        first = self._queue[0].shape_key
        batch, rest, rows = [], [], 0
        for pending in self._queue:
            size = pending.prepared.batch or 1
            if pending.shape_key == first and (not batch or rows + size <= self.max_batch_size):
                batch.append(pending)
                rows += size
            else:
                rest.append(pending)
        return batch, rest, sum(p.prepared.batch or 1 for p in rest)

    def _send(self, batch: list[_Pending]) -> None:
        merged = tensors.Prepared(
            {name: np.concatenate([p.prepared.arrays[name] for p in batch]) if len(batch) > 1
             else batch[0].prepared.arrays[name] for name in batch[0].prepared.arrays},
            sum(p.prepared.batch or 1 for p in batch))
        try:
            future = self.model._submit_prepared(self.model, merged, self.timeout)
        except Exception as error:
            for pending in batch:
                pending.future.set_exception(error)
            return
        future.add_done_callback(lambda done: self._distribute(batch, done))

    @staticmethod
    def _distribute(batch: list[_Pending], done: concurrent.futures.Future) -> None:
        error = done.exception()
        if error is not None:
            for pending in batch:
                pending.future.set_exception(error)
            return
        outputs = done.result()
        start = 0
        for pending in batch:
            rows = pending.prepared.batch or 1
            pending.future.set_result({k: v[start:start + rows] for k, v in outputs.items()})
            start += rows
