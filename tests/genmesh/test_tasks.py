"""genmesh.tasks: cancel_and_wait raises the caller's cancellation, not the tasks'; wait_within never loses a cancel."""

from __future__ import annotations

import asyncio

import pytest

from genmesh.tasks import cancel_and_wait, wait_within


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


async def test_wait_within_says_whether_the_awaitable_ended_in_time() -> None:
    done = asyncio.Event()
    done.set()
    assert await wait_within(done.wait(), 1.0)
    slow = asyncio.create_task(asyncio.Event().wait())
    assert not await wait_within(slow, 0.01)
    await asyncio.sleep(0)
    assert slow.cancelled(), "what ran out of time is cancelled"


async def test_wait_within_raises_the_awaitable_s_own_timeout() -> None:
    async def times_out() -> None:
        raise TimeoutError("the awaitable's own")

    with pytest.raises(TimeoutError, match="own"):
        await wait_within(times_out(), 10.0)


@pytest.mark.parametrize("turns", [0, 1, 2])
async def test_a_cancel_that_arrives_as_the_awaitable_ends_is_not_lost(turns: int) -> None:
    # Python 3.11's wait_for, cancelled one turn after its awaitable ended, accepts the cancel and then returns
    # the result: a worker stopped this way ran on. Accepted (cancel() True) must mean raised.
    event = asyncio.Event()
    waiter = asyncio.create_task(wait_within(event.wait(), 10.0))
    await asyncio.sleep(0)  # the waiter waits
    event.set()
    for _ in range(turns):
        await asyncio.sleep(0)
    if waiter.cancel():
        with pytest.raises(asyncio.CancelledError):
            await waiter
    else:
        assert waiter.result() is True
