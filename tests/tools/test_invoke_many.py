"""Tests for InvokeMany's engine: concurrency, completion order, deadlines, partial results, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from genmesh.errors import DeadlineExceeded, InvalidArgument, NotFound
from services.tools.fanout import CallOutcome, CallSpec, invoke_many
from services.tools.registry import ToolRegistry, default_registry
from services.tools.tool import Tool, ToolFailed

SLEEP_SCHEMA = {
    "type": "object",
    "properties": {"ms": {"type": "integer", "minimum": 0}, "fail": {"type": "boolean"}},
    "required": ["ms"],
    "additionalProperties": False,
}


class Sleeper:
    """An async tool that sleeps and records what happened to every call, as seen from the tool's side."""

    def __init__(self) -> None:
        self.running = 0
        self.most_running = 0
        self.cancelled = 0

    async def __call__(self, arguments: dict[str, Any]) -> dict[str, Any]:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(arguments["ms"] / 1000)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        if arguments.get("fail"):
            raise RuntimeError("asked to fail")
        return {"slept_ms": arguments["ms"]}


@pytest.fixture
def sleeper() -> Sleeper:
    return Sleeper()


@pytest.fixture
def registry(sleeper: Sleeper) -> Any:
    with default_registry(max_workers=2) as built:
        built.register(Tool("sleep", "Sleeps.", SLEEP_SCHEMA, sleeper, timeout_s=10.0))
        yield built


def _sleep(index: int, ms: int, **extra: Any) -> CallSpec:
    return CallSpec(index, f"c{index}", "sleep", json.dumps({"ms": ms, **extra}))


async def _all(outcomes: AsyncIterator[CallOutcome]) -> list[CallOutcome]:
    return [outcome async for outcome in outcomes]


async def test_fifty_calls_of_200_ms_overlap(registry: ToolRegistry, sleeper: Sleeper) -> None:
    calls = [_sleep(i, 200) for i in range(50)]
    got = await _all(invoke_many(registry, calls, max_concurrency=64))
    assert sorted(o.call.call_id for o in got) == sorted(c.call_id for c in calls)
    assert all(o.error is None for o in got)
    assert all(o.duration_ms >= 195 for o in got)
    # Every call was in flight at one moment: the latest start precedes the earliest end.
    assert max(o.start_s for o in got) < min(o.end_s for o in got)
    assert sleeper.most_running == 50


async def test_results_arrive_in_completion_order(registry: ToolRegistry) -> None:
    sleeps = [400, 100, 300, 0, 200]
    got = await _all(invoke_many(registry, [_sleep(i, ms) for i, ms in enumerate(sleeps)]))
    assert [json.loads(o.result_json or "")["slept_ms"] for o in got] == sorted(sleeps)
    assert [o.end_s for o in got] == sorted(o.end_s for o in got)


async def test_concurrency_is_bounded(registry: ToolRegistry, sleeper: Sleeper) -> None:
    got = await _all(invoke_many(registry, [_sleep(i, 50) for i in range(9)], max_concurrency=3))
    assert len(got) == 9 and sleeper.most_running == 3
    # Three waves: the last call started only after the first ones ended.
    assert max(o.start_s for o in got) >= min(o.end_s for o in got)


async def test_one_failure_or_timeout_never_fails_the_others(registry: ToolRegistry) -> None:
    calls = [
        _sleep(0, 10),
        CallSpec(1, "slow", "sleep", '{"ms": 5000}', timeout_s=0.1),
        _sleep(2, 10, fail=True),
        CallSpec(3, "ghost", "teleport", "{}"),
        CallSpec(4, "bad", "calculator", '{"expression": "__import__(1)"}'),
        CallSpec(5, "typo", "sleep", '{"ms": "soon"}'),
        _sleep(6, 20),
    ]
    got = {o.call.call_id: o for o in await _all(invoke_many(registry, calls))}
    assert got["c0"].error is None and got["c6"].error is None
    assert isinstance(got["slow"].error, DeadlineExceeded)
    assert isinstance(got["c2"].error, ToolFailed)
    assert isinstance(got["ghost"].error, NotFound)
    for call_id, field in [("bad", "arguments_json.expression"), ("typo", "arguments_json.ms")]:
        error = got[call_id].error
        assert isinstance(error, InvalidArgument) and [v.field for v in error.violations] == [field]


async def test_overall_deadline_reports_unfinished_calls(registry: ToolRegistry, sleeper: Sleeper) -> None:
    calls = [_sleep(0, 10), _sleep(1, 5000), _sleep(2, 5000)]
    got = {o.call.call_id: o for o in await _all(invoke_many(registry, calls, max_concurrency=2, timeout_s=0.3))}
    assert got["c0"].error is None
    assert isinstance(got["c1"].error, DeadlineExceeded) and isinstance(got["c2"].error, DeadlineExceeded)
    assert sleeper.cancelled == 2 and sleeper.running == 0


async def test_cancelling_the_stream_cancels_running_calls(registry: ToolRegistry, sleeper: Sleeper) -> None:
    received: list[CallOutcome] = []

    async def consume() -> None:
        async for outcome in invoke_many(registry, [_sleep(0, 0), *(_sleep(i, 10_000) for i in range(1, 6))]):
            received.append(outcome)

    task = asyncio.create_task(consume())
    deadline = time.monotonic() + 10
    while (sleeper.running < 5 or not received) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert sleeper.running == 5 and len(received) == 1
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert sleeper.running == 0 and sleeper.cancelled == 5, "the tools saw their calls cancelled"


async def test_closing_the_stream_early_cancels_the_rest(registry: ToolRegistry, sleeper: Sleeper) -> None:
    outcomes = invoke_many(registry, [_sleep(0, 0), _sleep(1, 10_000)])
    first = await anext(outcomes)
    assert first.call.call_id == "c0"
    await outcomes.aclose()
    assert sleeper.cancelled == 1 and sleeper.running == 0


async def test_request_level_mistakes_name_the_field(registry: ToolRegistry) -> None:
    cases = [
        ([], "calls"),
        ([_sleep(i, 0) for i in range(257)], "calls"),
        ([_sleep(0, 0), CallSpec(1, "c0", "sleep", '{"ms": 0}')], "calls[1].call_id"),
    ]
    for calls, field in cases:
        with pytest.raises(InvalidArgument) as caught:
            await _all(invoke_many(registry, calls))
        assert [v.field for v in caught.value.violations] == [field]
