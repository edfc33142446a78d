"""Stopping asyncio tasks (cancel, then wait until they have finished) and waiting on one for a while."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel every given task (None is skipped), then wait for each to end; their cancellation is not raised.

    The caller's own cancellation while it waits is raised once they ended: awaiting a task hands the caller's
    cancel on to that task, whose CancelledError must not pass for the tasks' own (a stop or a timeout lost).
    """
    pending = [task for task in tasks if task is not None]
    for task in pending:
        task.cancel()
    current = asyncio.current_task()
    cancels = current.cancelling() if current is not None else 0
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if current is not None and current.cancelling() > cancels:
        raise asyncio.CancelledError


async def wait_within(awaitable: Awaitable[object], seconds: float | None) -> bool:
    """Await ``awaitable`` for at most ``seconds`` (None: no limit); False when the time ran out (it is then
    cancelled). Python 3.11's ``asyncio.wait_for`` can lose a cancel of the caller that arrives as the awaitable
    ends (it returns the result instead); ``asyncio.timeout`` never does, and starts no task."""
    try:
        async with asyncio.timeout(seconds) as scope:
            await awaitable
    except TimeoutError:
        if not scope.expired():
            raise  # the awaitable's own TimeoutError
        return False
    return True
