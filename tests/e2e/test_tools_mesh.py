"""The tools service in a real mesh, with a plugin module and an MCP server: ListTools, InvokeMany's
concurrency, completion order, partial results and cancellation, search_docs, and the gateway relaying it."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.arithmetic import plain_arithmetic, python_value, same_number
from support.streams import collect, violated_fields

from genmesh import mesh as topology
from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, free_port, free_ports, start_service, wait_ready
from genmesh.status import code_value
from genmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, tools_pb2, tools_pb2_grpc

TESTS_TOOLS = Path(__file__).resolve().parents[1] / "tools"
OK = code_value(grpc.StatusCode.OK)


def _plugin_env() -> dict[str, str]:
    """PYTHONPATH for the spawned services, so that ``plugin_example`` (in tests/tools) imports."""
    paths = [str(TESTS_TOOLS), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"PYTHONPATH": os.pathsep.join(paths)}


@pytest_asyncio.fixture(scope="module")
async def tool_mesh(mesh: Mesh, log_root: Path) -> AsyncIterator[Mesh]:
    """A tools service that also serves plugin_example's tools and the tests' MCP server, and a gateway in
    front of it; both use the default mesh's retrieval and inference (cheaper than a second mesh)."""
    tools_port, gateway_port = free_ports(2)
    mcp_server = f"echo={shlex.quote(sys.executable)} {shlex.quote(str(TESTS_TOOLS / 'mcp_echo_server.py'))}"
    tools_args = ["serve", "tools", "--port", str(tools_port), "--retrieval-target", mesh.address("retrieval")]
    tools_args += ["--tools-module", "plugin_example:make_tools", "--mcp-server", mcp_server]
    gateway_args = ["serve", "gateway", "--port", str(gateway_port), "--tools-target", f"127.0.0.1:{tools_port}"]
    gateway_args += ["--retrieval-target", mesh.address("retrieval"), "--inference-target", mesh.address("inference")]
    log_dir = log_root / "tools"
    running = Mesh()
    try:
        running.services["tools"] = await start_service(
            topology.TOOLS, tools_args, f"127.0.0.1:{tools_port}", log_dir, _plugin_env()
        )
        running.services["gateway"] = await start_service(
            topology.GATEWAY, gateway_args, f"127.0.0.1:{gateway_port}", log_dir
        )
        await asyncio.gather(*(wait_ready(service, 120) for service in running.services.values()))
        yield running
    finally:
        await running.stop(grace_s=2.0)


@pytest_asyncio.fixture(scope="module")
async def stub(tool_mesh: Mesh) -> AsyncIterator[tools_pb2_grpc.ToolsServiceStub]:
    async with open_channel(tool_mesh.address("tools")) as channel:
        yield tools_pb2_grpc.ToolsServiceStub(channel)


def _call(call_id: str, tool: str, timeout_ms: int | None = None, **arguments: object) -> common_pb2.ToolCall:
    call = common_pb2.ToolCall(call_id=call_id, name=tool, arguments_json=json.dumps(arguments))
    if timeout_ms is not None:
        call.timeout_ms = timeout_ms
    return call


async def _invoke_many(
    stub: tools_pb2_grpc.ToolsServiceStub, calls: list[common_pb2.ToolCall], timeout_ms: int | None = None
) -> list[tools_pb2.InvokeManyResponse]:
    request = tools_pb2.InvokeManyRequest(calls=calls)
    if timeout_ms is not None:
        request.timeout_ms = timeout_ms
    return [response async for response in stub.InvokeMany(request, timeout=60)]


async def _probe(stub: tools_pb2_grpc.ToolsServiceStub, tag: str) -> dict[str, int]:
    call = _call("probe", "sleep_probe", tag=tag)
    response = await stub.Invoke(tools_pb2.InvokeRequest(call=call), timeout=10)
    counts: dict[str, int] = json.loads(response.result.result_json)
    return counts


async def test_every_source_is_listed(stub: tools_pb2_grpc.ToolsServiceStub) -> None:
    listed = await stub.ListTools(tools_pb2.ListToolsRequest(), timeout=10)
    sources = {t.name: t.source for t in listed.tools}
    for name in ("calculator", "clock", "unit_convert", "text_stats", "search_docs"):
        assert sources[name] == "builtin"
    assert sources["greet"] == sources["sleep_ms"] == "plugin"
    assert sources["echo__echo"] == sources["echo__crash"] == "mcp:echo"
    assert [t.name for t in listed.tools if not t.available] == [], listed.providers
    greet = next(t for t in listed.tools if t.name == "greet")
    schema = json.loads(greet.parameters_json_schema)
    assert schema["required"] == ["name"] and schema["properties"]["name"]["description"] == "Who to greet."
    assert greet.description == "Greet someone by name." and greet.idempotent
    (provider,) = listed.providers
    assert (provider.name, provider.tool_prefix, provider.available) == ("mcp:echo", "echo__", True)


async def test_fifty_calls_of_a_200_ms_tool_run_at_once(stub: tools_pb2_grpc.ToolsServiceStub) -> None:
    calls = [_call(f"s{i}", "sleep_ms", ms=200, tag="fifty") for i in range(50)]
    got = await _invoke_many(stub, calls)
    assert sorted(r.result.call_id for r in got) == sorted(c.call_id for c in calls)
    assert all(r.result.WhichOneof("outcome") == "result_json" for r in got), got[0]
    assert all(json.loads(r.result.result_json)["took_ms"] >= 195 for r in got)
    # All fifty were in flight at one moment (the latest start precedes the earliest end), so the whole
    # fan-in cost about one call's 200 ms, not fifty of them.
    assert max(r.start_ms for r in got) < min(r.end_ms for r in got)
    assert [r.end_ms for r in got] == sorted(r.end_ms for r in got), "streamed in completion order"


async def test_results_stream_in_completion_order(stub: tools_pb2_grpc.ToolsServiceStub) -> None:
    sleeps = [400, 100, 300, 0, 200]
    got = await _invoke_many(stub, [_call(f"o{i}", "sleep_ms", ms=ms) for i, ms in enumerate(sleeps)])
    assert [json.loads(r.result.result_json)["slept_ms"] for r in got] == sorted(sleeps)
    assert [r.index for r in got] == [3, 1, 4, 2, 0]


async def test_failures_are_reported_per_call_and_never_fail_the_others(
    stub: tools_pb2_grpc.ToolsServiceStub,
) -> None:
    calls = [
        _call("fast", "sleep_ms", ms=10),
        _call("late", "sleep_ms", timeout_ms=150, ms=5000),
        _call("ghost", "teleport"),
        _call("typo", "sleep_ms", ms="soon"),
        _call("evil", "calculator", expression="().__class__.__bases__[0]"),
        _call("mcp", "echo__echo", text="hi"),
        _call("mcp-error", "echo__fail", reason="no luck"),
        _call("math", "calculator", expression="6 * 7"),
    ]
    got = {r.result.call_id: r.result for r in await _invoke_many(stub, calls)}
    assert set(got) == {c.call_id for c in calls}
    codes = {call_id: (r.error.code if r.HasField("error") else OK) for call_id, r in got.items()}
    assert codes == {
        "fast": OK,
        "late": code_value(grpc.StatusCode.DEADLINE_EXCEEDED),
        "ghost": code_value(grpc.StatusCode.NOT_FOUND),
        "typo": code_value(grpc.StatusCode.INVALID_ARGUMENT),
        "evil": code_value(grpc.StatusCode.INVALID_ARGUMENT),
        "mcp": OK,
        "mcp-error": code_value(grpc.StatusCode.FAILED_PRECONDITION),
        "math": OK,
    }
    assert [v.field for v in got["typo"].error.field_violations] == ["arguments_json.ms"]
    assert [v.field for v in got["evil"].error.field_violations] == ["arguments_json.expression"]
    assert "no luck" in got["mcp-error"].error.message
    assert json.loads(got["math"].result_json)["value"] == 42
    assert json.loads(got["mcp"].result_json) == {"result": "hi"}


async def test_the_overall_timeout_bounds_every_call(stub: tools_pb2_grpc.ToolsServiceStub) -> None:
    calls = [_call("quick", "sleep_ms", ms=0), _call("slow", "sleep_ms", ms=10_000)]
    got = {r.result.call_id: r.result for r in await _invoke_many(stub, calls, timeout_ms=300)}
    assert not got["quick"].HasField("error")
    assert got["slow"].error.code == code_value(grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_cancelling_the_stream_stops_the_running_tools(stub: tools_pb2_grpc.ToolsServiceStub) -> None:
    tag = "cancel-me"
    calls = [_call(f"c{i}", "sleep_ms", ms=30_000, tag=tag) for i in range(4)]
    stream = stub.InvokeMany(tools_pb2.InvokeManyRequest(calls=calls), timeout=60)
    reading = asyncio.ensure_future(stream.read())
    deadline = time.monotonic() + 20
    while (await _probe(stub, tag))["running"] < 4 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert (await _probe(stub, tag))["running"] == 4, "the four calls are running in the tools service"

    stream.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    deadline = time.monotonic() + 10
    while (await _probe(stub, tag))["running"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert await _probe(stub, tag) == {"started": 4, "finished": 0, "cancelled": 4, "running": 0}


async def test_request_level_mistakes_fail_the_stream(stub: tools_pb2_grpc.ToolsServiceStub) -> None:
    cases = [
        (tools_pb2.InvokeManyRequest(), "calls"),
        (tools_pb2.InvokeManyRequest(calls=[_call("a", "clock"), _call("a", "clock")]), "calls[1].call_id"),
        (tools_pb2.InvokeManyRequest(calls=[_call("a", "clock")], max_concurrency=0), "max_concurrency"),
        (tools_pb2.InvokeManyRequest(calls=[_call("a", "clock")], timeout_ms=0), "timeout_ms"),
    ]
    for request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.InvokeMany(request, timeout=10):
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(caught.value) == [field]


async def test_search_docs_asks_the_retrieval_service(stub: tools_pb2_grpc.ToolsServiceStub) -> None:
    call = _call("docs", "search_docs", query="yield expression generator", top_k=2)
    response = await stub.Invoke(tools_pb2.InvokeRequest(call=call), timeout=10)
    found = json.loads(response.result.result_json)
    assert [p["rank"] for p in found["passages"]] == [1, 2]
    assert all(p["text"] and p["title"] for p in found["passages"])
    bad = _call("docs", "search_docs", query="yield", collection="no-such-collection")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Invoke(tools_pb2.InvokeRequest(call=bad), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == ["call.arguments_json.collection"]


async def test_search_docs_reports_unavailable_retrieval(log_root: Path) -> None:
    port, nobody = free_port(), free_port()
    args = ["serve", "tools", "--port", str(port), "--retrieval-target", f"127.0.0.1:{nobody}"]
    service = await start_service(topology.TOOLS, args, f"127.0.0.1:{port}", log_root / "tools-alone")
    try:
        await wait_ready(service, 60)
        async with open_channel(service.address) as channel:
            calls = [_call("docs", "search_docs", query="yield"), _call("calc", "calculator", expression="1+1")]
            got = {
                r.result.call_id: r.result for r in await _invoke_many(tools_pb2_grpc.ToolsServiceStub(channel), calls)
            }
        assert got["docs"].error.code == code_value(grpc.StatusCode.UNAVAILABLE)
        assert not got["calc"].HasField("error")
    finally:
        service.process.terminate()
        await service.process.wait()


async def test_gateway_relays_plugin_and_mcp_results(tool_mesh: Mesh) -> None:
    request = gateway_pb2.GatewayRequest(question="What does the yield statement do?")
    request.tool_calls.extend(
        [
            _call("hello", "greet", name="Ada"),
            _call("echo", "echo__echo", text="ping", times=2),
            _call("late", "sleep_ms", timeout_ms=100, ms=5000),
        ]
    )
    request.sampling.max_tokens = 4
    async with open_channel(tool_mesh.address("gateway")) as channel:
        got = await collect(gateway_pb2_grpc.GatewayServiceStub(channel).Generate(request, timeout=60))

    first_delta = got.kinds.index("delta")
    results = {e.tool_result.call_id: e.tool_result for e in got.events[:first_delta] if e.HasField("tool_result")}
    assert json.loads(results["hello"].result_json) == {"greeting": "Hello, Ada!"}
    assert json.loads(results["echo"].result_json) == {"result": "pingping"}
    assert results["late"].error.code == code_value(grpc.StatusCode.DEADLINE_EXCEEDED)
    (degraded,) = [e.degraded for e in got.events if e.HasField("degraded")]
    assert degraded.stage == "tool:late" and degraded.code == code_value(grpc.StatusCode.DEADLINE_EXCEEDED)
    timings = got.completion.timings
    spans = {s.stage: s for s in timings.stages}
    assert {"tool:hello", "tool:echo", "tool:late"} <= set(spans)
    assert spans["tool:late"].end_ms - spans["tool:late"].start_ms >= 95
    assert timings.tools_ms <= timings.pre_inference_ms
    assert [d.stage for d in got.completion.degraded] == ["tool:late"]


async def test_gateway_names_the_call_a_plugin_refuses(tool_mesh: Mesh) -> None:
    request = gateway_pb2.GatewayRequest(question="Hello?")
    request.tool_calls.extend([_call("ok", "greet", name="Ada"), _call("bad", "echo__echo", text=3)])
    async with open_channel(tool_mesh.address("gateway")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(gateway_pb2_grpc.GatewayServiceStub(channel).Generate(request, timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == ["tool_calls[1].arguments_json.text"]


_HOSTILE = st.one_of(
    st.sampled_from(
        [
            "__import__('os').system('true')",
            "().__class__.__mro__[1].__subclasses__()",
            "(lambda: 1)()",
            "[x for x in range(10**9)]",
            "9**9**9",
            "10**100000",
            "(" * 5000 + "1" + ")" * 5000,
            "open('/etc/passwd').read()",
            "globals()",
            "1 if True else 2",
            "2**" * 400 + "2",
            "True + 1",
            "~1",
            "6 << 2",
        ]
    ),
    st.text(alphabet="()+-*/%.0123456789e_abcxyz[]'\" ", max_size=300),
)


def _calculate(address: str, expression: str) -> object:
    """The calculator's value through the live service's Invoke (an RpcError if it refuses)."""
    with grpc.insecure_channel(address) as channel:
        invoke = channel.unary_unary(
            "/genmesh.v1.ToolsService/Invoke",
            request_serializer=tools_pb2.InvokeRequest.SerializeToString,
            response_deserializer=tools_pb2.InvokeResponse.FromString,
        )
        call = _call("calc", "calculator", expression=expression)
        response = invoke(tools_pb2.InvokeRequest(call=call), timeout=30)
    result = json.loads(response.result.result_json)
    assert result["expression"] == expression
    return result["value"]


def test_the_calculator_service_computes_exactly(tool_mesh: Mesh) -> None:
    address = tool_mesh.address("tools")
    for expression, expected in [("2 ** 10 + 1", 1025), ("7 / 2", 3.5), ("-7 // 2", -4), ("2 ** 100", 2**100)]:
        assert same_number(_calculate(address, expression), expected), expression


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(expression=_HOSTILE)
def test_the_calculator_service_never_reaches_python(tool_mesh: Mesh, expression: str) -> None:
    """Through the live service: anything but plain arithmetic is INVALID_ARGUMENT naming the expression;
    plain arithmetic is Python's own number (value and type) or INVALID_ARGUMENT (out of bounds)."""
    try:
        value = _calculate(tool_mesh.address("tools"), expression)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert violated_fields(error) == ["call.arguments_json.expression"], violated_fields(error)
        return
    tree = plain_arithmetic(expression)
    assert tree is not None, f"{expression!r} is not plain arithmetic, yet the service computed {value!r}"
    assert same_number(value, python_value(tree)), (expression, value)


async def test_a_dead_mcp_server_is_reported_and_restarted(stub: tools_pb2_grpc.ToolsServiceStub) -> None:
    got = await _invoke_many(stub, [_call("boom", "echo__crash"), _call("calc", "calculator", expression="1+1")])
    results = {r.result.call_id: r.result for r in got}
    assert results["boom"].error.code == code_value(grpc.StatusCode.UNAVAILABLE)
    assert not results["calc"].HasField("error")
    deadline = time.monotonic() + 30
    providers = (await stub.ListTools(tools_pb2.ListToolsRequest(), timeout=10)).providers
    while not (providers[0].available and providers[0].restarts) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        providers = (await stub.ListTools(tools_pb2.ListToolsRequest(), timeout=10)).providers
    assert providers[0].available and providers[0].restarts == 1
    echoed = await stub.Invoke(tools_pb2.InvokeRequest(call=_call("e", "echo__echo", text="back")), timeout=10)
    assert json.loads(echoed.result.result_json) == {"result": "back"}
