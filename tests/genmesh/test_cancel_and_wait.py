"""genmesh.tasks.cancel_and_wait: the tasks' cancellation is not raised, the caller's own is."""

from __future__ import annotations

import asyncio

import pytest

from genmesh.tasks import cancel_and_wait


async def _slow_to_end(ended: asyncio.Event) -> None:
    """A task that takes a while to end once cancelled (as one closing a connection)."""
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.sleep(0.2)
        ended.set()


async def test_the_tasks_cancellation_is_not_raised_and_each_has_ended() -> None:
    ended = asyncio.Event()
    task = asyncio.create_task(_slow_to_end(ended))
    await asyncio.sleep(0)
    await cancel_and_wait(task, None)
    assert task.cancelled() and ended.is_set()


async def test_a_timeout_that_expires_while_the_caller_waits_is_raised_once_the_tasks_ended() -> None:
    ended = asyncio.Event()
    task = asyncio.create_task(_slow_to_end(ended))
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):  # expires while cancel_and_wait waits for the task to end
            await cancel_and_wait(task)
    assert task.done()  # its clean-up received the caller's cancel too (awaiting a task hands it on)


async def test_a_caller_cancelled_while_it_waits_is_cancelled() -> None:
    ended = asyncio.Event()
    task = asyncio.create_task(_slow_to_end(ended))
    await asyncio.sleep(0)
    caller = asyncio.create_task(cancel_and_wait(task))
    await asyncio.sleep(0.05)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert task.done()
