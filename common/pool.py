"""A connection pool that serves waiting requests in the order they came (`create_engine` uses it).

SQLAlchemy's asyncio pool keeps its idle connections in an `asyncio.Queue`, which is not fair:
a connection given back wakes the longest waiter, but until that waiter runs, any request that
asks meanwhile takes the connection, and the waiter goes back to the end of the line. Under load
(more requests than connections) some requests lost their turn again and again: half waited for
no time, one in a hundred for 140 ms or more. Here a connection given back while requests wait
is handed to the first of them directly, and a request that finds none idle waits behind those
already waiting.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, TypeVar

from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util.concurrency import await_
from sqlalchemy.util.queue import AsyncAdaptedQueue, Empty, Full

T = TypeVar("T")


class FairQueue(AsyncAdaptedQueue[T]):
    """First come, first served: what is put goes to the longest waiter, never to a newcomer.

    Idle items and waiters never coexist: an item put while someone waits is handed over at
    once. Used from SQLAlchemy's greenlets (the pool's checkout), as the queue it replaces.
    """

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        super().__init__(maxsize, use_lifo)
        self._items: deque[T] = deque()
        self._waiters: deque[asyncio.Future[T]] = deque()

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self._items)

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, item: T) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # one that timed out or was cancelled has left
                waiter.set_result(item)
                return
        if self.full():
            raise Full()
        self._items.append(item)

    def put(self, item: T, block: bool = True, timeout: float | None = None) -> None:
        # Never more items than connections, so never full when a connection comes back: no wait.
        self.put_nowait(item)

    def get_nowait(self) -> T:
        if not self._items:
            raise Empty()
        return self._items.pop() if self.use_lifo else self._items.popleft()

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        if self._items or not block:
            return self.get_nowait()
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            item: T = await_(_wait(waiter, timeout))
        except BaseException as error:
            # Given up (timed out, cancelled) just as an item was handed over: it goes to the next in line.
            if waiter.done() and not waiter.cancelled():
                self.put_nowait(waiter.result())
            if isinstance(error, TimeoutError):
                raise Empty() from None
            raise
        return item


async def _wait(waiter: asyncio.Future[T], seconds: float | None) -> T:
    # `asyncio.timeout`, not `wait_for`, which on Python 3.11 may swallow a cancellation (gh-86296).
    async with asyncio.timeout(seconds):
        return await waiter


class FairQueuePool(AsyncAdaptedQueuePool):
    """SQLAlchemy's asyncio pool, waiting in line (`FairQueue`)."""

    _queue_class: Any = FairQueue
