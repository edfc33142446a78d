"""Stopping asyncio tasks: cancel, then wait until they have finished."""

from __future__ import annotations

import asyncio
import contextlib
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
