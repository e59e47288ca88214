"""A bound on requests in flight to one server, shared by threads and event loops."""

from __future__ import annotations

import asyncio
import collections
import threading


class Slots:
    """At most `limit` requests in flight to one server from this client, shared by its
    threads and its event loops, granted in arrival order: many threads of one job wait
    here, inside their deadlines, instead of overflowing the server's queue."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = limit
        self._lock = threading.Lock()
        self._waiters: collections.deque[_Waiter] = collections.deque()

    @property
    def in_use(self) -> int:
        return self.limit - self._free

    def try_acquire(self) -> bool:
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return True
            return False

    def acquire(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a slot (blocking)."""
        waiter = _ThreadWaiter()
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return True
            self._waiters.append(waiter)
        if waiter.event.wait(max(timeout, 0.0)):
            return True
        return self._withdraw(waiter)

    async def acquire_async(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a slot, on the running event loop."""
        if self.try_acquire():
            return True
        loop = asyncio.get_running_loop()
        waiter = _LoopWaiter(loop, loop.create_future(), self)
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return True
            self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), max(timeout, 0.0))
        except asyncio.TimeoutError:
            # Still queued: leave, no slot. Granted meanwhile: the grant sets the (shielded)
            # future on this loop, and the slot is ours.
            return self._withdraw(waiter)
        except asyncio.CancelledError:
            if self._withdraw(waiter) and not waiter.future.cancel():
                self.release()  # granted and given already: hand it on
            raise  # (granted but not yet given: the grant finds it cancelled, hands it on)
        return True

    def _withdraw(self, waiter: _Waiter) -> bool:
        """After a timeout: False if the waiter was still queued (it leaves), True if a
        slot was granted to it meanwhile (it keeps it)."""
        with self._lock:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                return True
            return False

    def release(self) -> None:
        with self._lock:
            if not self._waiters:
                self._free += 1
                return
            waiter = self._waiters.popleft()
        waiter.grant()  # the slot passes straight to the next in line


class _Waiter:
    def grant(self) -> None:
        raise NotImplementedError


class _ThreadWaiter(_Waiter):
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()

    def grant(self) -> None:
        self.event.set()


class _LoopWaiter(_Waiter):
    __slots__ = ("future", "loop", "slots")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future,
                 slots: Slots) -> None:
        self.loop, self.future, self.slots = loop, future, slots

    def grant(self) -> None:
        def give() -> None:
            if self.future.done():  # it gave up meanwhile: pass the slot on
                self.slots.release()
            else:
                self.future.set_result(True)

        try:
            self.loop.call_soon_threadsafe(give)
        except RuntimeError:  # its loop is closed: pass the slot on
            self.slots.release()
