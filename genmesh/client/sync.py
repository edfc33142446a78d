"""Client: the blocking form of AsyncClient, for scripts and notebooks.

It runs one AsyncClient on an event loop of its own, in a daemon thread, and waits for each result. The one
implementation of requests, events, retries and errors is AsyncClient's, and the channel is open_channel's
(TLS, API keys, tracing), which only exists for grpc.aio; a grpc sync channel would need all of it twice.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from genmesh.client.aio import AsyncClient
from genmesh.client.events import Answer, Event
from genmesh.client.jobs import Job, JobPage, JobUpdate
from genmesh.client.requests import Message

T = TypeVar("T")


class _Loop:
    """An event loop running in a daemon thread; ``run`` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="genmesh-client", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def iterate(self, events: AsyncIterator[T]) -> Iterator[T]:
        """The items of ``events``, each awaited on the loop; leaving early closes ``events`` (cancels the call)."""

        async def step() -> tuple[bool, T | None]:
            try:
                return True, await anext(events)
            except StopAsyncIteration:
                return False, None

        try:
            while True:
                more, item = self.run(step())
                if not more:
                    return
                yield item  # type: ignore[misc]  # an item when more
        finally:
            close = getattr(events, "aclose", None)
            if close is not None and self.loop.is_running():
                self.run(close())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class Client:
    """The blocking client: the same arguments and results as AsyncClient (see there), as a ``with`` block or
    closed with ``close``."""

    def __init__(self, target: str, **options: Any) -> None:
        self._loop = _Loop()

        async def make() -> AsyncClient:  # the channel belongs to the loop it is made on
            return AsyncClient(target, **options)

        try:
            self._client = self._loop.run(make())
        except BaseException:
            self._loop.stop()
            raise
        self.jobs = Jobs(self._client, self._loop)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and stop the loop's thread; closing again does nothing."""
        if self._loop.loop.is_closed():
            return
        self._loop.run(self._client.close())
        self._loop.stop()

    def generate(self, question: str = "", messages: Sequence[Message] = (), **options: Any) -> Iterator[Event]:
        return self._loop.iterate(self._client.generate(question, messages, **options))

    def answer(self, question: str = "", messages: Sequence[Message] = (), **options: Any) -> Answer:
        return self._loop.run(self._client.answer(question, messages, **options))


class Jobs:
    """``client.jobs`` of the blocking client (see AsyncJobs)."""

    def __init__(self, client: AsyncClient, loop: _Loop) -> None:
        self._jobs = client.jobs
        self._loop = loop

    def submit(self, question: str = "", messages: Sequence[Message] = (), **options: Any) -> Job:
        return self._loop.run(self._jobs.submit(question, messages, **options))

    def get(self, job_id: str, **options: Any) -> Job:
        return self._loop.run(self._jobs.get(job_id, **options))

    def cancel(self, job_id: str, **options: Any) -> Job:
        return self._loop.run(self._jobs.cancel(job_id, **options))

    def list(self, **options: Any) -> JobPage:
        return self._loop.run(self._jobs.list(**options))

    def watch(self, job_id: str, **options: Any) -> Iterator[JobUpdate]:
        return self._loop.iterate(self._jobs.watch(job_id, **options))
