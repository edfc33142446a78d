"""Many tool calls at once: bounded concurrency, per-call and overall deadlines, results in completion order.

One call's failure or timeout is that call's outcome and never fails the others (partial results).
Closing or cancelling the stream of outcomes cancels the calls still running.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from genmesh.errors import DeadlineExceeded, FieldViolation, GenmeshError, InvalidArgument, quote
from genmesh.tasks import cancel_and_wait
from services.tools.registry import ToolRegistry

log = logging.getLogger("genmesh.tools")

MAX_CALLS = 256
"""Most calls one fan-out may carry."""
DEFAULT_MAX_CONCURRENCY = 64


@dataclass(frozen=True, slots=True)
class CallSpec:
    """One call of a fan-out: ``timeout_s`` bounds its run (not its wait for a slot); None: the tool's."""

    index: int
    call_id: str
    name: str
    arguments_json: str
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """How one call ended: ``result_json`` or ``error``; times in seconds since the fan-out started."""

    call: CallSpec
    result_json: str | None
    error: BaseException | None
    start_s: float
    end_s: float
    duration_ms: float


def check_calls(calls: Sequence[CallSpec], field: str = "calls") -> None:
    """Request-level checks: 1..MAX_CALLS calls with unique ids; raises InvalidArgument naming the field."""
    if not calls:
        raise InvalidArgument.field(field, "must hold at least one call")
    if len(calls) > MAX_CALLS:
        raise InvalidArgument.field(field, f"must hold at most {MAX_CALLS} calls, got {len(calls)}")
    seen: dict[str, int] = {}
    bad: list[FieldViolation] = []
    for call in calls:
        if call.call_id in seen:
            bad.append(
                FieldViolation(
                    f"{field}[{call.index}].call_id",
                    f"duplicate call id {quote(call.call_id)} (as calls[{seen[call.call_id]}])",
                )
            )
        else:
            seen[call.call_id] = call.index
    if bad:
        raise InvalidArgument(bad)


async def invoke_many(
    registry: ToolRegistry,
    calls: Sequence[CallSpec],
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    timeout_s: float | None = None,
) -> AsyncGenerator[CallOutcome, None]:
    """Run ``calls`` at most ``max_concurrency`` at a time; yield each outcome the moment it completes.

    ``timeout_s`` bounds the whole fan-out (time waiting for a slot included): calls unfinished when it runs
    out end with DeadlineExceeded. Errors of a call (NotFound, InvalidArgument with fields relative to the
    call, such as ``arguments_json.expression``, DeadlineExceeded, Unavailable, ToolFailed...) are its
    outcome. Closing the iterator early, or cancelling the task that iterates it, cancels the calls still
    running and waits for them to end.
    """
    check_calls(calls)
    if max_concurrency < 1:
        raise InvalidArgument.field("max_concurrency", "must be at least 1")
    if timeout_s is not None and (math.isnan(timeout_s) or timeout_s < 0):
        raise InvalidArgument.field("timeout_s", "must be a non-negative number")
    origin = time.monotonic()
    deadline = None if timeout_s is None else origin + timeout_s
    slots = asyncio.Semaphore(max_concurrency)
    finished: asyncio.Queue[CallOutcome] = asyncio.Queue()

    async def run(call: CallSpec) -> None:
        started = time.monotonic()
        result_json: str | None = None
        error: BaseException | None = None
        try:
            try:
                async with asyncio.timeout_at(_loop_time(deadline)):
                    await slots.acquire()
            except TimeoutError:
                raise DeadlineExceeded(
                    f"tool call {quote(call.call_id)} ({quote(call.name)}) found no free slot within the fan-out's "
                    f"{timeout_s:g} s"
                ) from None
            try:
                started = time.monotonic()
                # The registry bounds the run by the smaller of the call's, the tool's and the fan-out's budget.
                result_json = await _invoke(registry, call, deadline)
            finally:
                slots.release()
        except GenmeshError as failure:
            error = failure
        except Exception as failure:  # a bug, not the tool's fault: report it for this call, log it
            log.exception("tool call %r failed unexpectedly", call.call_id)
            error = failure
        ended = time.monotonic()
        finished.put_nowait(
            CallOutcome(call, result_json, error, started - origin, ended - origin, (ended - started) * 1000.0)
        )

    tasks = [asyncio.create_task(run(call), name=f"tool-call-{call.call_id}") for call in calls]
    try:
        for _ in calls:
            yield await finished.get()
    finally:
        await cancel_and_wait(*tasks)


async def _invoke(registry: ToolRegistry, call: CallSpec, deadline: float | None) -> str:
    budgets = [b for b in (call.timeout_s, None if deadline is None else deadline - time.monotonic()) if b is not None]
    timeout = min(budgets) if budgets else None
    if not call.name:
        raise InvalidArgument.field("name", "must not be empty")
    result = await registry.invoke(call.name, call.arguments_json or "{}", timeout, field_prefix="arguments_json")
    return result.result_json


def _loop_time(deadline: float | None) -> float | None:
    """``deadline`` (time.monotonic) on the running loop's clock, which asyncio.timeout_at expects."""
    if deadline is None:
        return None
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())
