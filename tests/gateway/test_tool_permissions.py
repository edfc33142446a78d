"""Per-key tool permissions over real in-process upstreams: a client-forced call of a tool the key may not call is
never sent and fails in its own ToolResult (PERMISSION_DENIED, TOOL_NOT_ALLOWED); the key's other calls run; MCP
tools are named like any other; a job runs with the tools its key could call when it was submitted."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import grpc
import pytest
from inprocess import ScriptedMesh, ScriptedTool, start_scripted_mesh

from gateway.auth.caller import CALLER, Caller, Scope
from gateway.jobs.config import JobConfig
from gateway.jobs.model import JobRecord
from gateway.jobs.runtime import JobRuntime
from gateway.jobs.service import JobServicer
from gateway.orchestrator import Orchestrator
from gateway.upstreams import Upstreams
from genmesh.errors import InvalidArgument, PermissionDenied, Reason
from genmesh.status import code_value, error_info_of
from genmesh.v1 import common_pb2, gateway_pb2, jobs_pb2

NO_RETRIEVAL = gateway_pb2.RetrievalOptions(disabled=True)
MCP_TOOL = "docs__search"  # an MCP server's tool, as the tools service's registry names it
NO_CONTEXT = cast(grpc.aio.ServicerContext, None)


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedMesh]:
    running = await start_scripted_mesh(ScriptedTool("calculator"), ScriptedTool("secret"), ScriptedTool(MCP_TOOL))
    yield running
    await running.stop()


@pytest.fixture
async def gateway(scripted: ScriptedMesh) -> AsyncIterator[Orchestrator]:
    upstreams = Upstreams(scripted.targets())
    yield Orchestrator(upstreams)
    await upstreams.close()


@contextlib.contextmanager
def calling_as(*allowed_tools: str) -> Iterator[Caller]:
    """Serve what follows as the auth interceptor would for a key limited to ``allowed_tools`` (none: all)."""
    caller = Caller("apiKeys/k1", "k1", frozenset({Scope.GENERATE, Scope.JOBS}), allowed_tools=frozenset(allowed_tools))
    token = CALLER.set(caller)
    try:
        yield caller
    finally:
        CALLER.reset(token)


def _request(*names: str) -> gateway_pb2.GatewayRequest:
    calls = [common_pb2.ToolCall(call_id=f"c{i}", name=name, arguments_json="{}") for i, name in enumerate(names)]
    return gateway_pb2.GatewayRequest(question="q?", retrieval=NO_RETRIEVAL, tool_calls=calls)


async def _events(gateway: Orchestrator, request: gateway_pb2.GatewayRequest) -> list[gateway_pb2.GatewayEvent]:
    return [event async for event in gateway.answer(request, 10.0)]


def _results(events: list[gateway_pb2.GatewayEvent]) -> dict[str, common_pb2.ToolResult]:
    return {e.tool_result.call_id: e.tool_result for e in events if e.HasField("tool_result")}


def _sent(scripted: ScriptedMesh) -> list[str]:
    return [call.name for invocation in scripted.tools.invocations for call in invocation.calls]


def _assert_not_allowed(result: common_pb2.ToolResult, name: str) -> None:
    status = result.error.status
    assert status.code == code_value(grpc.StatusCode.PERMISSION_DENIED), result
    info = error_info_of(status)
    assert info is not None and info.reason == Reason.TOOL_NOT_ALLOWED
    assert status.message == f"this API key may not call the tool {name!r}" == result.error.message
    assert result.error.code == status.code and result.name == name


async def test_a_disallowed_call_fails_in_its_own_result_and_the_allowed_ones_run(
    scripted: ScriptedMesh, gateway: Orchestrator
) -> None:
    with calling_as("calculator", MCP_TOOL):
        events = await _events(gateway, _request("calculator", "secret", MCP_TOOL))
    results = _results(events)
    _assert_not_allowed(results["c1"], "secret")
    assert results["c0"].result_json == results["c2"].result_json == '{"value": 42}'
    assert _sent(scripted) == ["calculator", MCP_TOOL], "the disallowed call never reaches the tools service"
    degraded = [e.degraded for e in events if e.HasField("degraded")]
    assert [d.stage for d in degraded] == ["tool:c1"]
    assert degraded[0].code == code_value(grpc.StatusCode.PERMISSION_DENIED)
    assert events[-1].complete.degraded[0].stage == "tool:c1", "the answer still comes, noting the failed call"


async def test_with_require_all_stages_a_disallowed_call_fails_the_request_as_tool_not_allowed(
    gateway: Orchestrator,
) -> None:
    request = _request("calculator", "secret")
    request.require_all_stages = True
    with calling_as("calculator"), pytest.raises(PermissionDenied) as refused:
        await _events(gateway, request)
    assert refused.value.reason == Reason.TOOL_NOT_ALLOWED
    assert "'secret'" in refused.value.message


async def test_an_mcp_tool_is_refused_by_its_registry_name_like_any_tool(
    scripted: ScriptedMesh, gateway: Orchestrator
) -> None:
    with calling_as("calculator"):
        results = _results(await _events(gateway, _request(MCP_TOOL, "calculator")))
    _assert_not_allowed(results["c0"], MCP_TOOL)
    assert _sent(scripted) == ["calculator"]


async def test_only_disallowed_calls_send_nothing_and_reveal_no_tool(
    scripted: ScriptedMesh, gateway: Orchestrator
) -> None:
    long_name = "x" * 300
    with calling_as("calculator"):
        # "nonexistent" is unknown to the tools service: a limited key is told it may not call it, not that
        # it does not exist; nor are its arguments checked against a schema it may not see.
        request = _request("secret", "nonexistent", long_name)
        request.tool_calls[0].arguments_json = '{"not": "checked"}'
        results = _results(await _events(gateway, request))
    _assert_not_allowed(results["c0"], "secret")
    _assert_not_allowed(results["c1"], "nonexistent")
    quoted = "x" * 63 + "…"
    assert results["c2"].error.status.message == f"this API key may not call the tool {quoted!r}"
    assert scripted.tools.invocations == []


async def test_an_unknown_tool_error_lists_only_the_tools_the_key_may_call(gateway: Orchestrator) -> None:
    with calling_as("calculator", "typo"), pytest.raises(InvalidArgument) as caught:
        await _events(gateway, _request("typo"))
    assert caught.value.violations[0].description == "unknown tool 'typo' (known: calculator)"


async def test_a_key_without_a_tool_list_and_an_open_gateway_call_every_tool(
    scripted: ScriptedMesh, gateway: Orchestrator
) -> None:
    with calling_as():
        limited = _results(await _events(gateway, _request("secret", MCP_TOOL)))
    opened = _results(await _events(gateway, _request("secret", MCP_TOOL)))
    for results in (limited, opened):
        assert all(result.result_json for result in results.values()), results
    assert _sent(scripted) == ["secret", MCP_TOOL] * 2


async def test_a_job_runs_with_the_tools_its_key_could_call_at_submission(
    scripted: ScriptedMesh, gateway: Orchestrator, tmp_path: Path
) -> None:
    runtime = JobRuntime(JobConfig(str(tmp_path / "jobs.db"), workers=1), gateway.answer)
    await runtime.start()
    try:
        service = JobServicer(runtime)
        with calling_as("calculator"):
            submitted = await service.SubmitJob(
                jobs_pb2.SubmitJobRequest(request=_request("calculator", "secret")), NO_CONTEXT
            )
        # The worker runs it with no RPC caller at all: what the job recorded decides.
        final = [item async for item in runtime.watch(submitted.job.id, 0) if isinstance(item, JobRecord)][-1]
    finally:
        await runtime.stop()
    result = jobs_pb2.JobResult.FromString(final.result)
    by_call = {r.call_id: r for r in result.tool_results}
    _assert_not_allowed(by_call["c1"], "secret")
    assert by_call["c0"].result_json and _sent(scripted) == ["calculator"]
    assert final.owner == "apiKeys/k1" and final.allowed_tools == {"calculator"}
