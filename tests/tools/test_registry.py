"""Tests for the tool registry: validation, lookup, timeouts, thread-pool isolation and concurrency."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from genmesh.errors import DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from services.tools.builtin.clock import clock_tool, current_time
from services.tools.registry import InvocationResult, ToolRegistry, default_registry
from services.tools.tool import Tool, ToolFailed


def _schema(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def _fields(error: InvalidArgument) -> list[str]:
    return [violation.field for violation in error.violations]


@pytest.fixture
def registry() -> Any:
    with default_registry(max_workers=2) as built:
        yield built


# --- registration and lookup ------------------------------------------------------------------------------------------


def test_default_registry_lists_builtins(registry: ToolRegistry) -> None:
    assert [tool.name for tool in registry.tools()] == ["calculator", "clock", "unit_convert", "text_stats"]
    assert "calculator" in registry and len(registry) == 4
    assert {tool.source for tool in registry.tools()} == {"builtin"}
    assert registry.get("clock").parameters["properties"]["timezone"]["default"] == "UTC"


def test_duplicate_and_bad_registrations_raise_value_error(registry: ToolRegistry) -> None:
    with pytest.raises(ValueError, match="already registered"):
        registry.register(clock_tool())
    bad_schema = Tool("bad", "d", {"type": "object", "properties": {"x": {"type": "nope"}}}, lambda a: a)
    with pytest.raises(ValueError, match="not a valid JSON Schema"):
        registry.register(bad_schema)
    with pytest.raises(ValueError, match="object"):
        registry.register(Tool("arr", "d", {"type": "array"}, lambda a: a))
    with pytest.raises(ValueError, match="tool name"):
        Tool("has space", "d", _schema(), lambda a: a)
    with pytest.raises(ValueError, match="timeout_s"):
        Tool("t", "d", _schema(), lambda a: a, timeout_s=0)

    async def coroutine(arguments: dict[str, Any]) -> None:
        return None

    with pytest.raises(ValueError, match="blocking"):
        Tool("t", "d", _schema(), coroutine, blocking=True)
    with pytest.raises(ValueError, match="max_workers"):
        ToolRegistry(max_workers=0)


@pytest.mark.asyncio
async def test_unknown_tool_is_not_found(registry: ToolRegistry) -> None:
    with pytest.raises(NotFound, match="nope"):
        registry.get("nope")
    with pytest.raises(NotFound, match="nope"):
        await registry.invoke("nope", "{}")


# --- validation ---------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_schema_violations_name_the_failing_path(registry: ToolRegistry) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await registry.invoke("calculator", '{"expression": 5, "extra": 1}', field_prefix="tool_calls[0].arguments")
    assert _fields(caught.value) == ["tool_calls[0].arguments.expression", "tool_calls[0].arguments.extra"]
    with pytest.raises(InvalidArgument) as caught:
        await registry.invoke("calculator", "{}")
    assert _fields(caught.value) == ["arguments.expression"]
    assert caught.value.violations[0].description == "is required"
    with pytest.raises(InvalidArgument) as caught:
        await registry.invoke("calculator", "{not json")
    assert _fields(caught.value) == ["arguments"]


@pytest.mark.asyncio
async def test_handler_errors_are_placed_under_the_prefix(registry: ToolRegistry) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await registry.invoke("calculator", '{"expression": "x + 1"}', field_prefix="tool_calls[2].arguments")
    assert _fields(caught.value) == ["tool_calls[2].arguments.expression"]
    with pytest.raises(InvalidArgument) as caught:
        await registry.invoke("clock", '{"timezone": "Mars/Olympus_Mons"}')
    assert _fields(caught.value) == ["arguments.timezone"]


@pytest.mark.asyncio
async def test_results_are_json_with_timings(registry: ToolRegistry) -> None:
    result = await registry.invoke("calculator", '{"expression": "2 ** 10"}')
    assert isinstance(result, InvocationResult) and result.tool == "calculator"
    assert json.loads(result.result_json) == {"expression": "2 ** 10", "value": 1024}
    assert result.finished >= result.started
    assert result.duration_ms == pytest.approx((result.finished - result.started) * 1000)
    clock = json.loads((await registry.invoke("clock", "")).result_json)
    assert clock["timezone"] == "UTC" and clock["iso8601"].endswith("+00:00")


def test_clock_converts_a_fixed_instant() -> None:
    instant = datetime(2024, 7, 1, 12, 0, tzinfo=UTC)
    paris = current_time("Europe/Paris", now=instant)
    assert paris == {"timezone": "Europe/Paris", "iso8601": "2024-07-01T14:00:00+02:00", "unix": instant.timestamp()}


# --- failures -------------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_unexpected_exceptions_become_tool_failed() -> None:
    def explode(arguments: dict[str, Any]) -> None:
        raise KeyError("boom")

    def not_json(arguments: dict[str, Any]) -> object:
        return object()

    async def exhausted(arguments: dict[str, Any]) -> None:
        raise ResourceExhausted("busy", retry_after_s=2.0)

    with ToolRegistry() as local:
        local.register(Tool("explode", "d", _schema(), explode))
        local.register(Tool("not_json", "d", _schema(), not_json, blocking=True))
        local.register(Tool("exhausted", "d", _schema(), exhausted))
        with pytest.raises(ToolFailed) as caught:
            await local.invoke("explode", "{}")
        assert caught.value.tool == "explode" and caught.value.error_type == "KeyError"
        with pytest.raises(ToolFailed, match="not JSON"):
            await local.invoke("not_json", "{}")
        with pytest.raises(ResourceExhausted) as exhausted_error:
            await local.invoke("exhausted", "{}")
        assert exhausted_error.value.retry_after_s == 2.0


@pytest.mark.asyncio
async def test_async_timeout_raises_deadline_exceeded_naming_the_tool() -> None:
    async def slow(arguments: dict[str, Any]) -> str:
        await asyncio.sleep(10)
        return "late"

    with ToolRegistry() as local:
        local.register(Tool("slow", "d", _schema(), slow, timeout_s=0.05))
        with pytest.raises(DeadlineExceeded, match="'slow'"):
            await local.invoke("slow", "{}")
        local.get("slow").timeout_s = 30.0
        with pytest.raises(DeadlineExceeded, match=r"0\.05"):
            await local.invoke("slow", "{}", timeout_s=0.05)
        with pytest.raises(DeadlineExceeded):
            await local.invoke("slow", "{}", timeout_s=0.0)


@pytest.mark.asyncio
async def test_blocking_timeout_raises_deadline_exceeded() -> None:
    release = threading.Event()

    def stuck(arguments: dict[str, Any]) -> str:
        release.wait(5)
        return "done"

    local = ToolRegistry(max_workers=1)
    local.register(Tool("stuck", "d", _schema(), stuck, timeout_s=0.05, blocking=True))
    try:
        with pytest.raises(DeadlineExceeded, match="'stuck'"):
            await local.invoke("stuck", "{}")
    finally:
        release.set()
        local.close()
    with pytest.raises(Unavailable):
        await local.invoke("stuck", "{}")


# --- concurrency ------------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_blocking_tool_runs_in_the_pool_while_the_loop_stays_free() -> None:
    release = threading.Event()
    entered = asyncio.Event()
    loop = asyncio.get_running_loop()
    seen: dict[str, Any] = {}

    def blocking(arguments: dict[str, Any]) -> str:
        seen["thread"] = threading.current_thread().name
        loop.call_soon_threadsafe(entered.set)
        seen["released"] = release.wait(5)
        return "ok"

    with ToolRegistry(max_workers=2) as local:
        local.register(Tool("blocking", "d", _schema(), blocking, blocking=True))
        call = asyncio.create_task(local.invoke("blocking", "{}"))
        ticks = 0
        await asyncio.wait_for(entered.wait(), 5)
        for _ in range(10):  # the loop keeps running while the handler blocks in its thread
            await asyncio.sleep(0.001)
            ticks += 1
        assert not call.done()
        release.set()  # only the loop can release the handler: had it run on the loop, this would never run
        result = await call
    assert ticks == 10 and seen["released"] is True
    assert seen["thread"].startswith("genmesh-tool") and seen["thread"] != threading.main_thread().name
    assert json.loads(result.result_json) == "ok"


@pytest.mark.asyncio
async def test_concurrent_async_invocations_overlap() -> None:
    spans: list[tuple[float, float]] = []

    async def nap(arguments: dict[str, Any]) -> int:
        start = time.monotonic()
        await asyncio.sleep(0.2)
        spans.append((start, time.monotonic()))
        return int(arguments["n"])

    with ToolRegistry() as local:
        local.register(Tool("nap", "d", _schema(n={"type": "integer"}), nap, timeout_s=30))
        results = await asyncio.gather(*(local.invoke("nap", json.dumps({"n": n})) for n in range(50)))
    assert [json.loads(result.result_json) for result in results] == list(range(50))
    assert len(spans) == 50
    assert max(start for start, _ in spans) < min(end for _, end in spans), "every call started before any ended"
    assert max(r.started for r in results) < min(r.finished for r in results)
