"""The bound on requests in flight (offload.slots): threads and event loops share it, wait
in arrival order, give up at their deadline, and never leak a slot."""

from __future__ import annotations

import asyncio
import threading
import time

from offload.slots import Slots


def test_a_full_bound_makes_threads_wait_in_order_and_time_out_without_leaking():
    slots = Slots(2)
    assert slots.try_acquire()
    assert slots.try_acquire()
    assert not slots.try_acquire()
    assert not slots.acquire(0.05)  # timed out: nothing taken
    order: list[int] = []

    def wait(index: int) -> None:
        assert slots.acquire(5)
        order.append(index)

    waiters = []
    for index in range(3):
        waiters.append(threading.Thread(target=wait, args=(index,)))
        waiters[-1].start()
        time.sleep(0.05)  # queued in this order
    for _ in range(3):
        slots.release()
        time.sleep(0.05)
    for thread in waiters:
        thread.join(5)
    assert order == [0, 1, 2]
    assert slots.in_use == 2
    slots.release()
    slots.release()
    assert slots.in_use == 0


def test_event_loop_waiters_are_granted_from_other_threads_and_never_leak():
    slots = Slots(1)

    async def scenario() -> None:
        assert await slots.acquire_async(1)  # free: at once
        timed_out = await slots.acquire_async(0.05)
        assert not timed_out
        assert slots.in_use == 1
        # Granted by a release from another thread while waiting.
        threading.Timer(0.1, slots.release).start()
        assert await slots.acquire_async(5)
        # A waiting task that is cancelled takes nothing with it.
        task = asyncio.ensure_future(slots.acquire_async(5))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        slots.release()
        assert slots.in_use == 0

    asyncio.run(scenario())
    assert slots.try_acquire()  # the slot is really free
    slots.release()


def test_many_threads_and_tasks_never_exceed_the_bound():
    slots = Slots(3)
    peak, active, lock = [0], [0], threading.Lock()

    def hold() -> None:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.002)
        with lock:
            active[0] -= 1
        slots.release()

    def thread_work() -> None:
        for _ in range(20):
            assert slots.acquire(10)
            hold()

    async def task_work() -> None:
        for _ in range(20):
            assert await slots.acquire_async(10)
            await asyncio.to_thread(hold)

    async def tasks() -> None:
        await asyncio.gather(*(task_work() for _ in range(4)))

    threads = [threading.Thread(target=thread_work) for _ in range(4)]
    threads.append(threading.Thread(target=asyncio.run, args=(tasks(),)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert peak[0] <= 3
    assert slots.in_use == 0
