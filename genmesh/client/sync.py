"""Client: the blocking form of AsyncClient, for scripts and notebooks.

It runs one AsyncClient on an event loop of its own, in a daemon thread, and waits for each result. The one
implementation of requests, events, retries and errors is AsyncClient's, and the channel is open_channel's
(TLS, API keys, tracing), which only exists for grpc.aio; a grpc sync channel would need all of it twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import weakref
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from typing import Any, TypeVar, Unpack

from genmesh.client.aio import AsyncClient
from genmesh.client.events import Answer, Event
from genmesh.client.jobs import Job, JobPage, JobUpdate
from genmesh.client.requests import GenerateOptions, Message, RequestOptions
from genmesh.client.retry import DEFAULT_RETRY, RetryPolicy
from genmesh.tls import ClientTLS

T = TypeVar("T")


def _settle(task: asyncio.Task[T], outcome: concurrent.futures.Future[T]) -> None:
    """Copy the finished ``task``'s result, exception or cancellation to ``outcome``."""
    if task.cancelled():
        outcome.cancel()
        outcome.set_running_or_notify_cancel()  # else concurrent.futures.wait never sees it done
    elif (error := task.exception()) is not None:
        outcome.set_exception(error)
    else:
        outcome.set_result(task.result())


class _Loop:
    """An event loop running in a daemon thread; ``run`` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="genmesh-client", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """The result of ``coroutine`` on the loop; interrupted (Ctrl-C), the coroutine is cancelled, and has
        finished, before the interruption is raised."""
        outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
        started: list[asyncio.Task[T]] = []

        def start() -> None:
            task = self.loop.create_task(coroutine)
            task.add_done_callback(lambda _: _settle(task, outcome))
            started.append(task)

        self.loop.call_soon_threadsafe(start)
        try:
            return outcome.result()
        except BaseException:  # the callbacks run in order: the task exists when the cancel runs
            self.loop.call_soon_threadsafe(lambda: started[0].cancel())
            concurrent.futures.wait([outcome])
            raise

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
        """Finish the loop's async generators, stop the loop and its thread, and close it; again: nothing."""
        if self.loop.is_closed():
            return
        try:
            if self.loop.is_running():
                asyncio.run_coroutine_threadsafe(self.loop.shutdown_asyncgens(), self.loop).result()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
            self.loop.close()


def _shut(loop: _Loop, client: AsyncClient) -> None:
    """Close ``client``'s channel, then stop ``loop`` even when closing failed."""
    if loop.loop.is_closed():
        return
    try:
        loop.run(client.close())
    finally:
        loop.stop()


class Client:
    """The blocking client: the same arguments and results as AsyncClient (see there), as a ``with`` block or
    closed with ``close``."""

    def __init__(
        self,
        target: str,
        *,
        tls: ClientTLS | None = None,
        api_key: str = "",
        timeout_s: float | None = 60.0,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self._loop = _Loop()

        async def make() -> AsyncClient:  # the channel belongs to the loop it is made on
            return AsyncClient(target, tls=tls, api_key=api_key, timeout_s=timeout_s, retry=retry)

        try:
            self._client = self._loop.run(make())
        except BaseException:
            self._loop.stop()
            raise
        self.jobs = Jobs(self._client, self._loop)
        # a Client never closed frees its channel, loop and thread when it is collected (or at exit)
        self._finalizer = weakref.finalize(self, _shut, self._loop, self._client)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and stop the loop's thread; closing again does nothing."""
        self._finalizer()

    def generate(
        self, question: str = "", messages: Sequence[Message] = (), **options: Unpack[GenerateOptions]
    ) -> Iterator[Event]:
        return self._loop.iterate(self._client.generate(question, messages, **options))

    def answer(
        self, question: str = "", messages: Sequence[Message] = (), **options: Unpack[GenerateOptions]
    ) -> Answer:
        return self._loop.run(self._client.answer(question, messages, **options))


class Jobs:
    """``client.jobs`` of the blocking client (see AsyncJobs)."""

    def __init__(self, client: AsyncClient, loop: _Loop) -> None:
        self._jobs = client.jobs
        self._loop = loop

    def submit(
        self,
        question: str = "",
        messages: Sequence[Message] = (),
        *,
        idempotency_key: str = "",
        priority: int = 0,
        timeout_s: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> Job:
        job = self._jobs.submit(
            question, messages, idempotency_key=idempotency_key, priority=priority, timeout_s=timeout_s, **options
        )
        return self._loop.run(job)

    def get(self, job_id: str, *, timeout_s: float | None = None) -> Job:
        return self._loop.run(self._jobs.get(job_id, timeout_s=timeout_s))

    def cancel(self, job_id: str, *, timeout_s: float | None = None) -> Job:
        return self._loop.run(self._jobs.cancel(job_id, timeout_s=timeout_s))

    def list(
        self,
        *,
        state: str = "",
        page_size: int = 0,
        page_token: str = "",
        full: bool = False,
        timeout_s: float | None = None,
    ) -> JobPage:
        page = self._jobs.list(state=state, page_size=page_size, page_token=page_token, full=full, timeout_s=timeout_s)
        return self._loop.run(page)

    def watch(self, job_id: str, *, after_sequence: int = 0, timeout_s: float | None = None) -> Iterator[JobUpdate]:
        return self._loop.iterate(self._jobs.watch(job_id, after_sequence=after_sequence, timeout_s=timeout_s))
