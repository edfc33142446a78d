"""Fan-in: several event streams run concurrently, their items merged in arrival order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from genmesh.tasks import cancel_and_wait

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Item(Generic[T]):
    value: T


@dataclass(frozen=True, slots=True)
class _Failure:
    error: Exception


async def merge(*streams: AsyncIterator[T]) -> AsyncIterator[T]:
    """Read every stream in its own task and yield each item the moment it arrives.

    The first stream to fail fails the merge; leaving the merge (done, failed or closed early) cancels the
    streams still running and waits for them.
    """
    arrivals: asyncio.Queue[_Item[T] | _Failure | None] = asyncio.Queue()  # bounded by the streams' item counts

    async def pump(stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                arrivals.put_nowait(_Item(item))
        except asyncio.CancelledError:
            raise
        except Exception as error:
            arrivals.put_nowait(_Failure(error))
        finally:
            arrivals.put_nowait(None)

    readers = [asyncio.create_task(pump(stream)) for stream in streams]
    try:
        running = len(readers)
        while running:
            arrival = await arrivals.get()
            if arrival is None:
                running -= 1
            elif isinstance(arrival, _Failure):
                raise arrival.error
            else:
                yield arrival.value
    finally:
        await cancel_and_wait(*readers)
