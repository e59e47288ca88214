"""`offload.Batcher`: merge many small calls into server-sized batches.

A reconstruction job with many threads (or an event loop handing out jets one by one)
calls `batcher.infer(...)` or `batcher.submit(...)` with a few rows each; the batcher
collects calls until `max_batch_size` rows are waiting or `max_delay` has passed since the
first, sends them as one request, and hands every caller its own rows of the result. Like
Triton's dynamic batcher, but before the network: fewer, larger messages.

**A single-threaded event loop** (CMS SONIC's acquire/produce) uses ``max_delay=None``:
``submit()`` queues an event's rows and returns a future at once; a request leaves when
`max_batch_size` rows are queued, or when the loop asks for a result that is still queued
(``future.result()``, :meth:`Batcher.flush`, :meth:`Batcher.close`) — so the job queues
many events' jets and collects each event's answer later, without ever waiting for a timer
and without one request per event:

    with offload.Batcher(tagger, max_delay=None,
                         prepare=lambda raw: tagger_inputs(raw["c"], raw["j"])) as batcher:
        for event in events:
            pending.append(batcher.submit(c=event.constituents, j=event.jets))  # acquire
            if len(pending) > 64:
                use(pending.popleft().result())                               # produce

`prepare` (optional) turns the merged raw rows of a batch into the model's inputs, once per
request instead of once per call: per-call numpy overhead dominates small calls, so
preprocessing the batch is several times cheaper than preprocessing each event. Given
several models, one Batcher feeds them all from the same calls: `prepare` returns
``{model name: inputs}`` (e.g. :func:`offload.physics.jets.inputs_for`, which computes the
shared features once) and each future resolves to ``{model name: {output: rows}}``.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from offload.client import Model
from offload.errors import InvalidInputError, OffloadError
from offload.inputs import Prepared


@dataclass
class _Pending:
    arrays: dict[str, np.ndarray]  # the model's inputs, or raw rows for `prepare`
    rows: int
    future: concurrent.futures.Future
    shape_key: tuple
    prepared: Prepared | None = None


class BatchFuture(concurrent.futures.Future):
    """The future of one :meth:`Batcher.submit` call. With ``max_delay=None``, asking for
    its result (or exception) while the call is still queued sends the queue at once."""

    def __init__(self, batcher: Batcher) -> None:
        super().__init__()
        self._batcher = batcher

    def result(self, timeout: float | None = None) -> Any:
        self._flush_if_queued()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._flush_if_queued()
        return super().exception(timeout)

    def _flush_if_queued(self) -> None:
        if not self.done() and self._batcher.max_delay is None:
            self._batcher.flush()


class Batcher:
    """Coalesces calls to one batching model. Thread-safe; use as a context manager or call
    :meth:`close` (which sends what is waiting).

    Args:
        model: a model with ``max_batch_size > 0``.
        max_batch_size: rows per request (at most the model's; with `prepare`, rows per
            preprocessing call, split into requests of the model's size when larger).
        max_delay: seconds a call may wait for others; ``None``: no timer, a batch leaves
            when full or when a result still queued is asked for (single-threaded loops).
        timeout: per request, as :meth:`Model.infer`.
        prepare: maps the merged rows of a batch (the arrays given to :meth:`submit`, each
            with the same first dimension) to the model's inputs, row for row. Without it,
            calls are the model's inputs and are checked at submit; with it, a batch's
            inputs are checked when it is sent, and an error reaches every call in it.
    """

    def __init__(self, model: Model | Sequence[Model], *, max_batch_size: int | None = None,
                 max_delay: float | None = 0.002, timeout: float | None = None,
                 prepare: Callable[[dict[str, np.ndarray]], Mapping[str, Any]] | None = None
                 ) -> None:
        self.models = (model,) if isinstance(model, Model) else tuple(model)
        self._several = not isinstance(model, Model)
        if not self.models or (self._several and prepare is None):
            raise InvalidInputError("a Batcher over several models needs at least one model "
                                    "and a `prepare` returning {model name: inputs}")
        for one in self.models:
            if one.max_batch_size <= 0:
                raise InvalidInputError(f"model '{one.name}' does not batch (max_batch_size "
                                        "0): there is nothing to coalesce", model=one.name)
        model = self.models[0]
        self.model = model
        # Above the model's max_batch_size only when `prepare` is given: one preprocessing call
        # on many rows, then requests of the model's size, pipelined (as Model.submit splits).
        largest = max(one.max_batch_size for one in self.models)
        self.max_batch_size = (max_batch_size or largest) if prepare is not None \
            else min(max_batch_size or model.max_batch_size, model.max_batch_size)
        self.max_delay = max_delay
        self.timeout = timeout
        self.prepare = prepare
        self._queue: list[_Pending] = []
        self._rows = 0
        self._since = 0.0  # when the oldest queued call arrived
        self._condition = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        if max_delay is not None:
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
        arrays = {**(inputs or {}), **named}
        future = BatchFuture(self)
        if self.prepare is None:
            prepared = self.model._prepare(self.model, arrays)
            pending = _Pending(prepared.arrays, prepared.batch or 1, future,
                               tuple(prepared.arrays[t.name].shape[1:]
                                     for t in self.model.inputs), prepared)
        else:
            pending = self._raw(arrays, future)
        full: list[list[_Pending]] = []
        with self._condition:
            if self._closed:
                raise OffloadError("this Batcher is closed")
            if not self._queue:
                self._since = time.monotonic()
                if self._thread is not None:
                    self._condition.notify()  # its timer starts with the first queued call
            self._queue.append(pending)
            self._rows += pending.rows
            while self._rows >= self.max_batch_size:
                batch = self._take()
                if not batch:
                    break
                full.append(batch)
        for batch in full:  # sent from this thread: no hand-off to the batcher's thread
            self._send(batch)
        return future

    def flush(self) -> None:
        """Send everything queued now, in batches of at most max_batch_size rows."""
        with self._condition:
            batches = []
            while self._queue:
                batches.append(self._take())
        for batch in batches:
            self._send(batch)

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify()
        if self._thread is not None:
            self._thread.join()
        self.flush()

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _raw(self, arrays: dict[str, Any], future: concurrent.futures.Future) -> _Pending:
        """A call for `prepare`: arrays sharing their first dimension (checked cheaply: a
        single-threaded event loop calls this once per event and model)."""
        rows = -1
        key = []
        for name, value in arrays.items():
            if type(value) is not np.ndarray:
                value = arrays[name] = np.asarray(value)
            shape = value.shape
            if not shape or (rows >= 0 and shape[0] != rows):
                raise InvalidInputError(
                    f"model '{self.model.name}': the arrays of a call to a Batcher with "
                    f"`prepare` must share their first dimension (rows), got "
                    f"{ {n: list(np.shape(a)) for n, a in arrays.items()} }",
                    model=self.model.name)
            rows = shape[0]
            key.append((name, shape[1:], value.dtype))
        if rows < 0:
            raise InvalidInputError(f"model '{self.model.name}': a call needs at least one "
                                    "array", model=self.model.name)
        return _Pending(arrays, rows, future, tuple(key))

    def _loop(self) -> None:
        assert self.max_delay is not None
        while True:
            with self._condition:
                while not self._queue and not self._closed:
                    self._condition.wait()
                if not self._queue:
                    return  # closed and drained
                # Wait out the oldest call's delay (submit() sends full batches itself).
                while (self._queue and not self._closed
                       and (left := self._since + self.max_delay - time.monotonic()) > 0):
                    self._condition.wait(left)
                batch = self._take() if self._queue else []
            if batch:
                self._send(batch)

    def _take(self) -> list[_Pending]:
        """Up to max_batch_size rows of calls sharing the first call's shape, in order.
        Called with the lock held."""
        first = self._queue[0].shape_key
        batch: list[_Pending] = []
        rest: list[_Pending] = []
        rows = 0
        for pending in self._queue:
            if pending.shape_key == first and (not batch
                                               or rows + pending.rows <= self.max_batch_size):
                batch.append(pending)
                rows += pending.rows
            else:
                rest.append(pending)
        self._queue = rest
        self._rows = sum(p.rows for p in rest)
        self._since = time.monotonic()
        return batch

    def _send(self, batch: list[_Pending]) -> None:
        try:
            merged = self._merge(batch)
            futures = {one.name: one._submit_prepared(one, merged[one.name], self.timeout)
                       for one in self.models}
        except Exception as error:
            for pending in batch:
                pending.future.set_exception(error)
            return
        if not self._several:
            futures[self.model.name].add_done_callback(
                lambda done: self._distribute(batch, done.exception(), done))
            return
        left = [len(futures)]
        lock = threading.Lock()

        def one_done(_: concurrent.futures.Future) -> None:
            with lock:
                left[0] -= 1
                if left[0]:
                    return
            error = next((f.exception() for f in futures.values() if f.exception()), None)
            self._distribute(batch, error, futures)

        for future in futures.values():
            future.add_done_callback(one_done)

    def _merge(self, batch: list[_Pending]) -> dict[str, Prepared]:
        arrays = {name: np.concatenate([p.arrays[name] for p in batch]) if len(batch) > 1
                  else batch[0].arrays[name] for name in batch[0].arrays}
        rows = sum(p.rows for p in batch)
        if self.prepare is None:
            return {self.model.name: Prepared(arrays, rows)}
        made = self.prepare(arrays)
        per_model = made if self._several else {self.model.name: made}
        out = {}
        for one in self.models:
            if one.name not in per_model:
                raise InvalidInputError(f"the Batcher's prepare() made no inputs for model "
                                        f"'{one.name}' (it returned {sorted(per_model)})",
                                        model=one.name)
            prepared = one._prepare(one, dict(per_model[one.name]))
            if prepared.batch != rows:
                raise InvalidInputError(
                    f"model '{one.name}': the Batcher's prepare() made {prepared.batch} rows "
                    f"from {rows}; it must keep one row per input row", model=one.name)
            out[one.name] = prepared
        return out

    def _distribute(self, batch: list[_Pending], error: BaseException | None,
                    done: Any) -> None:
        if error is not None:
            for pending in batch:
                pending.future.set_exception(error)
            return
        if self._several:
            results = {name: future.result() for name, future in done.items()}
        else:
            results = {"": done.result()}
        start = 0
        for pending in batch:
            stop = start + pending.rows
            sliced = {name: {k: v[start:stop] for k, v in outputs.items()}
                      for name, outputs in results.items()}
            pending.future.set_result(sliced if self._several else sliced[""])
            start = stop
