"""Micro-batching: concurrent callers' items that arrive within a short window share one call of a batch function."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

from genmesh.tasks import cancel_and_wait, wait_within

T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class BatchStats:
    """What the batcher has done so far."""

    batches: int = 0
    items: int = 0
    largest: int = 0

    @property
    def mean_size(self) -> float:
        """Items per batch on average."""
        return self.items / self.batches if self.batches else 0.0


@dataclass(slots=True)
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    arrived: float


class MicroBatcher(Generic[T, R]):
    """Collects items from concurrent ``submit`` calls and runs ``function`` on them together in ``executor``.

    A batch closes ``window_s`` after its first item arrived, or as soon as it holds ``max_batch`` items; one
    batch runs at a time, and items that arrive while it runs form the next one (which starts at once if its
    first item has already waited a full window). ``window_s == 0`` turns batching off: every item runs alone.
    ``function`` must return one result per item, in order. Use it from one event loop. ``observe`` is told
    each batch's size as it starts.
    """

    def __init__(
        self,
        function: Callable[[Sequence[T]], Sequence[R]],
        executor: Executor,
        *,
        window_s: float,
        max_batch: int,
        observe: Callable[[int], None] | None = None,
    ) -> None:
        if not window_s >= 0:
            raise ValueError(f"window_s must be >= 0, got {window_s!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        self._function = function
        self._executor = executor
        self._observe = observe
        self.window_s = window_s
        self.max_batch = max_batch if window_s > 0 else 1
        self.stats = BatchStats()
        self._queue: collections.deque[_Pending[T, R]] = collections.deque()
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    async def submit(self, item: T) -> R:
        """``function([..., item, ...])``'s result for ``item``."""
        if self._closed:
            raise RuntimeError("the batcher is closed")
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="micro-batcher")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(item, future, time.monotonic()))
        self._arrived.set()
        if len(self._queue) >= self.max_batch:
            self._full.set()
        return await future

    async def close(self) -> None:
        """Stop the worker; waiting callers get CancelledError."""
        self._closed = True
        await cancel_and_wait(self._worker)
        while self._queue:
            self._queue.popleft().future.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            remaining = self._queue[0].arrived + self.window_s - time.monotonic()
            if remaining > 0 and len(self._queue) < self.max_batch:
                self._full.clear()
                await wait_within(self._full.wait(), remaining)
            batch: list[_Pending[T, R]] = []
            while self._queue and len(batch) < self.max_batch:
                pending = self._queue.popleft()
                if not pending.future.done():  # a caller that gave up is skipped
                    batch.append(pending)
            if len(self._queue) < self.max_batch:
                self._full.clear()
            if not batch:
                continue
            self.stats.batches += 1
            self.stats.items += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
            if self._observe is not None:
                self._observe(len(batch))
            try:
                results = await loop.run_in_executor(self._executor, self._function, [p.item for p in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
            except asyncio.CancelledError:
                for pending in batch:
                    pending.future.cancel()
                raise
            except Exception as error:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)
