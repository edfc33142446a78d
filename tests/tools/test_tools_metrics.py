"""The tools service's Prometheus metrics, scraped over HTTP from the real service served in-process: calls of
Invoke and InvokeMany counted by tool and by the code the client got, names the registry does not know under
tool="unknown", durations as the tools took them; an MCP server's up gauge and restarts as its provider dies and
is restarted; with metrics off, nothing counted."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import grpc
from support.scrape import Samples, changed, delta, recorded, scrape_async, scrape_until, series, value
from support.served import served

from genmesh.metrics.rpc import GO_CODE_NAMES
from genmesh.status import code_of_value
from genmesh.v1 import common_pb2, tools_pb2, tools_pb2_grpc
from services.tools.mcp_provider import McpServerConfig
from services.tools.server import ToolsConfig, ToolsService

SERVER = Path(__file__).with_name("mcp_echo_server.py")
CALLS = "genmesh_tools_calls_total"
DURATION = "genmesh_tools_call_duration_seconds"
UP = "genmesh_tools_mcp_server_up"
RESTARTS = "genmesh_tools_mcp_server_restarts_total"


def tools_service(mcp: bool = False) -> ToolsService:
    servers = (McpServerConfig("echo", (sys.executable, str(SERVER))),) if mcp else ()
    return ToolsService(ToolsConfig(entry_points=False, mcp_servers=servers, mcp_start_timeout_s=60.0))


def call(name: str, arguments: str = "{}", call_id: str = "c", **fields: int) -> common_pb2.ToolCall:
    return common_pb2.ToolCall(call_id=call_id, name=name, arguments_json=arguments, **fields)


async def invoke(stub: tools_pb2_grpc.ToolsServiceStub, name: str, arguments: str = "{}") -> str:
    """The Go name of the code the client got for ``Invoke``."""
    try:
        await stub.Invoke(tools_pb2.InvokeRequest(call=call(name, arguments)), timeout=30)
    except grpc.aio.AioRpcError as error:
        return GO_CODE_NAMES[error.code()]
    return "OK"


def changes(after: Samples, before: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """What grew in the series of ``name`` (by sorted labels)."""
    return {tuple(sorted(labels)): grew for labels, grew in series(changed(after, before), name).items()}


async def test_calls_by_tool_and_code_with_unknown_names_in_one_series() -> None:
    stranger, other = f"nope_{uuid.uuid4().hex[:8]}", f"nope_{uuid.uuid4().hex[:8]}"
    async with served(tools_service(mcp=True)) as service, grpc.aio.insecure_channel(service.address) as channel:
        stub = tools_pb2_grpc.ToolsServiceStub(channel)
        before = await scrape_async(service.metrics_url)
        assert [await invoke(stub, "calculator", '{"expression": "1+2"}') for _ in range(2)] == ["OK", "OK"]
        assert await invoke(stub, "calculator", '{"expression": 5}') == "InvalidArgument"
        assert await invoke(stub, stranger) == "NotFound"
        assert await invoke(stub, "echo__fail", '{"reason": "no luck"}') == "FailedPrecondition", "the tool failed"
        started = time.monotonic()
        assert await invoke(stub, "echo__slow", '{"ms": 300}') == "OK"
        slow_s = time.monotonic() - started
        many = tools_pb2.InvokeManyRequest(
            calls=[
                call("calculator", '{"expression": "2*3"}', "a"),
                call("text_stats", '{"text": "one two"}', "b"),
                call(other, "{}", "c"),
                call("calculator", '{"expression": "1"}', "d", timeout_ms=0),  # refused before it runs
            ]
        )
        results = {r.result.call_id: r.result async for r in stub.InvokeMany(many, timeout=30)}
        after = await scrape_async(service.metrics_url)
    codes = {i: GO_CODE_NAMES[code_of_value(r.error.code)] if r.HasField("error") else "OK" for i, r in results.items()}
    assert codes == {"a": "OK", "b": "OK", "c": "NotFound", "d": "InvalidArgument"}
    assert changes(after, before, CALLS) == {
        (("code", "OK"), ("tool", "calculator")): 3,
        (("code", "InvalidArgument"), ("tool", "calculator")): 2,
        (("code", "OK"), ("tool", "text_stats")): 1,
        (("code", "NotFound"), ("tool", "unknown")): 2,
        (("code", "FailedPrecondition"), ("tool", "echo__fail")): 1,
        (("code", "OK"), ("tool", "echo__slow")): 1,
    }
    counts = changes(after, before, f"{DURATION}_count")
    assert counts == {
        (("tool", "calculator"),): 5,
        (("tool", "text_stats"),): 1,
        (("tool", "unknown"),): 2,
        (("tool", "echo__fail"),): 1,
        (("tool", "echo__slow"),): 1,
    }
    slow = delta(after, before, f"{DURATION}_sum", tool="echo__slow")
    assert 0.3 <= slow <= slow_s, "the time the tool took, within the client's"
    labels = {v for name, labelset in after for _, v in labelset if name.startswith("genmesh_tools_")}
    assert stranger not in labels and other not in labels, "a client's tool names never become label values"


async def test_an_mcp_server_that_dies_is_down_until_its_provider_restarts_it() -> None:
    async with served(tools_service(mcp=True)) as service, grpc.aio.insecure_channel(service.address) as channel:
        stub = tools_pb2_grpc.ToolsServiceStub(channel)
        first = await scrape_async(service.metrics_url)
        assert value(first, UP, server="echo") == 1, "up once start-up connected it"
        restarts = value(first, RESTARTS, server="echo")
        assert (RESTARTS, frozenset({("server", "echo")})) in first, "the series exists before any restart"
        assert await invoke(stub, "echo__crash") == "Unavailable", "the server process exits during the call"
        down = await scrape_async(service.metrics_url)  # the provider waits 0.5 s before it starts it again
        assert value(down, UP, server="echo") == 0
        assert value(down, RESTARTS, server="echo") == restarts
        back = await scrape_until(service.metrics_url, lambda samples: value(samples, UP, server="echo") == 1, 60.0)
        assert value(back, UP, server="echo") == 1
        assert value(back, RESTARTS, server="echo") == restarts + 1
        assert await invoke(stub, "echo__echo", '{"text": "x"}') == "OK", "the restarted server answers"
    assert delta(back, first, CALLS, tool="echo__crash", code="Unavailable") == 1


async def test_with_metrics_off_no_call_is_counted() -> None:
    before = recorded("genmesh_tools_")
    async with served(tools_service(), metrics=False) as service, grpc.aio.insecure_channel(service.address) as channel:
        stub = tools_pb2_grpc.ToolsServiceStub(channel)
        assert await invoke(stub, "calculator", '{"expression": "1+2"}') == "OK"
        answers = stub.InvokeMany(tools_pb2.InvokeManyRequest(calls=[call("calculator", '{"expression": "1"}')]))
        assert [r.result.HasField("error") async for r in answers] == [False]
    assert recorded("genmesh_tools_") == before
