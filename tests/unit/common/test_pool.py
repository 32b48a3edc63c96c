"""`common.pool.FairQueue`: connections go to waiting requests in the order they asked."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.util.concurrency import greenlet_spawn
from sqlalchemy.util.queue import Empty, Full

from common.pool import FairQueue


async def take(queue: FairQueue[str], timeout: float | None = 5.0) -> str:
    # As the pool does: from a greenlet of SQLAlchemy's.
    item: str = await greenlet_spawn(queue.get, True, timeout)
    return item


async def test_what_is_given_back_goes_to_the_longest_waiter_not_to_a_newcomer() -> None:
    queue: FairQueue[str] = FairQueue(maxsize=3)
    first = asyncio.create_task(take(queue))
    second = asyncio.create_task(take(queue))
    await asyncio.sleep(0)  # both wait now
    queue.put_nowait("a")
    with pytest.raises(Empty):  # a newcomer, before the first waiter has run again, finds nothing idle
        queue.get_nowait()
    queue.put_nowait("b")
    assert [await first, await second] == ["a", "b"]
    assert queue.empty()


async def test_an_idle_item_is_taken_at_once_and_the_queue_keeps_at_most_maxsize() -> None:
    queue: FairQueue[str] = FairQueue(maxsize=1)
    queue.put_nowait("a")
    assert queue.full()
    with pytest.raises(Full):
        queue.put_nowait("b")
    assert await take(queue) == "a"
    with pytest.raises(Empty):
        queue.get_nowait()


async def test_a_waiter_that_times_out_leaves_the_line_and_loses_nothing() -> None:
    queue: FairQueue[str] = FairQueue(maxsize=2)
    with pytest.raises(Empty):
        await take(queue, timeout=0.01)
    patient = asyncio.create_task(take(queue))
    await asyncio.sleep(0)
    queue.put_nowait("a")
    assert await patient == "a"


async def test_an_item_handed_to_a_waiter_cancelled_meanwhile_goes_to_the_next_in_line() -> None:
    queue: FairQueue[str] = FairQueue(maxsize=2)
    leaving = asyncio.create_task(take(queue))
    staying = asyncio.create_task(take(queue))
    await asyncio.sleep(0)
    queue.put_nowait("a")  # handed to `leaving`, which is cancelled before it runs again
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert await staying == "a"
