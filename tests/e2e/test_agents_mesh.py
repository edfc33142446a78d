"""The agent loop through a real mesh: the shipped model calls tools under tool_choice's grammar, the gateway
checks and runs them through the real tools service (support.agent_tools), feeds the results back and streams
every step; client functions end the stream for the client to run them."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from jsonschema import Draft202012Validator
from support.agent_tools import LEDGER, NAP_S
from support.agents_mesh import AgentsMesh, agents_mesh
from support.slow_inference import slow_down_forward
from support.streams import Collected, collect

from genmesh.v1 import (
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    tools_pb2,
    tools_pb2_grpc,
)
from services.inference.engine import EngineConfig

CONTEXT = 512
"""The shipped model's context, in tokens."""
BLOCK = EngineConfig().block_size
"""The KV cache's block: the unit the prefix cache shares."""
CALL_ID = re.compile(r"call_[A-Za-z0-9]{24}")
REQUIRED = common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_REQUIRED)
TOOL_CALLS = common_pb2.FINISH_REASON_TOOL_CALLS
GATEWAY = gateway_pb2.TOOL_EXECUTOR_GATEWAY
CLIENT = gateway_pb2.TOOL_EXECUTOR_CLIENT


@pytest_asyncio.fixture(scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AgentsMesh]:
    async with agents_mesh(tmp_path_factory.mktemp("agents")) as served:
        yield served


@pytest_asyncio.fixture(scope="module")
async def channel(running: AgentsMesh) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(running.gateway) as opened:
        yield opened


@pytest.fixture
def gateway(channel: grpc.aio.Channel) -> gateway_pb2_grpc.GatewayServiceStub:
    return gateway_pb2_grpc.GatewayServiceStub(channel)


def agent_request(
    *server_tools: str,
    functions: tuple[common_pb2.FunctionDeclaration, ...] = (),
    choice: common_pb2.ToolChoice | None = None,
    max_steps: int | None = None,
    max_tokens: int = 64,
    parallel: bool | None = False,
    question: str = "What is the weather in Paris?",
) -> gateway_pb2.GatewayRequest:
    """With ``parallel`` False (the default here) a constrained step makes exactly one call."""
    request = gateway_pb2.GatewayRequest(
        question=question,
        retrieval=gateway_pb2.RetrievalOptions(disabled=True),
        sampling=common_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens),
    )
    request.tools.extend(gateway_pb2.ToolDeclaration(server_tool=name) for name in server_tools)
    request.tools.extend(gateway_pb2.ToolDeclaration(function=function) for function in functions)
    if choice is not None:
        request.tool_choice.CopyFrom(choice)
    if max_steps is not None:
        request.max_steps = max_steps
    if parallel is not None:
        request.parallel_tool_calls = parallel
    return request


def named(tool: str) -> common_pb2.ToolChoice:
    return common_pb2.ToolChoice(tool_name=tool)


def of(collected: Collected, kind: str) -> list[gateway_pb2.GatewayEvent]:
    return [event for event in collected.events if event.WhichOneof("event") == kind]


def steps_of(collected: Collected) -> list[str]:
    """The stream as one letter per event, runs of deltas as one: c(all) s(tep_end) r(esult) d(egraded) t(ext) C."""
    letters = {"tool_call": "c", "step_end": "s", "tool_result": "r", "degraded": "d", "delta": "t", "complete": "C"}
    text = "".join(letters[kind] for kind in collected.kinds)
    return re.sub("t+", "t", text).split("s")


async def schema_of(running: AgentsMesh, tool: str) -> dict[str, object]:
    async with grpc.aio.insecure_channel(running.tools) as channel:
        listed = await tools_pb2_grpc.ToolsServiceStub(channel).ListTools(tools_pb2.ListToolsRequest(), timeout=10)
    schema: dict[str, object] = json.loads(next(t for t in listed.tools if t.name == tool).parameters_json_schema)
    return schema


async def test_required_makes_a_valid_call_the_tool_runs_and_the_loop_answers(
    running: AgentsMesh, gateway: gateway_pb2_grpc.GatewayServiceStub
) -> None:
    got = await collect(gateway.Generate(agent_request("weather", choice=REQUIRED, max_steps=2), timeout=60))

    first, second, last = steps_of(got)
    assert first.replace("t", "") == "c" and second.startswith("r") and set(second[1:]) <= {"t"} and last == "C"
    (called,) = of(got, "tool_call")
    assert called.tool_call.step == 1 and called.tool_call.executor == GATEWAY
    assert CALL_ID.fullmatch(called.tool_call.call.call_id) and called.tool_call.call.name == "weather"
    Draft202012Validator(await schema_of(running, "weather")).validate(json.loads(called.tool_call.call.arguments_json))
    (result,) = of(got, "tool_result")
    assert result.tool_result.call_id == called.tool_call.call.call_id
    assert json.loads(result.tool_result.result_json)["celsius"] == 21
    ends = [e.step_end for e in of(got, "step_end")]
    assert [(s.step, s.finish_reason == TOOL_CALLS) for s in ends] == [(1, True), (2, False)]
    assert got.text.strip(), "the last step answers in text"

    completion = got.completion
    assert completion.finish_reason == ends[-1].finish_reason
    for field in ("prompt_tokens", "completion_tokens", "cached_tokens"):
        assert getattr(completion.usage, field) == sum(getattr(s.usage, field) for s in ends), field
    # Step 2's prompt is step 1's and more: the prefix cache serves every full block of step 1's prompt.
    whole_blocks = ends[0].usage.prompt_tokens // BLOCK * BLOCK
    assert ends[1].usage.cached_tokens >= whole_blocks > 0, [str(s.usage) for s in ends]
    spans = {(s.stage, s.step, s.call_id) for s in completion.timings.stages}
    call_id = called.tool_call.call.call_id
    assert spans == {("inference", 1, ""), (f"tool:{call_id}", 1, call_id), ("inference", 2, "")}


async def test_max_steps_ends_the_loop_with_a_forced_answer(gateway: gateway_pb2_grpc.GatewayServiceStub) -> None:
    request = agent_request("weather", choice=named("weather"), max_steps=3, max_tokens=48)
    got = await collect(gateway.Generate(request, timeout=60))
    ends = [e.step_end for e in of(got, "step_end")]
    assert [(s.step, s.finish_reason == TOOL_CALLS) for s in ends] == [(1, True), (2, True), (3, False)]
    assert [e.tool_call.step for e in of(got, "tool_call")] == [1, 2]
    assert len(of(got, "tool_result")) == 2
    assert got.completion.finish_reason == ends[-1].finish_reason != TOOL_CALLS


async def test_a_result_too_long_for_the_context_is_cut_and_the_prefix_kept(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
) -> None:
    got = await collect(gateway.Generate(agent_request("dump", choice=named("dump"), max_steps=2), timeout=60))
    (result,) = of(got, "tool_result")
    assert len(result.tool_result.result_json) > 9_000, "the client gets the whole result"
    first, second = (e.step_end.usage for e in of(got, "step_end"))
    room = CONTEXT - 64
    assert second.prompt_tokens < room, "the cut conversation fits: inference did not truncate it"
    assert second.cached_tokens >= first.prompt_tokens // BLOCK * BLOCK, "and it kept step 1's prefix"


async def test_parallel_calls_run_at_once(gateway: gateway_pb2_grpc.GatewayServiceStub) -> None:
    LEDGER.clear()
    request = agent_request("nap", choice=named("nap"), max_steps=2, max_tokens=128, parallel=True)
    got = await collect(gateway.Generate(request, timeout=60))
    # The step's last call may be cut short by max_tokens: an error result, never run (a zero-length span).
    ran = {e.tool_call.call.call_id for e in of(got, "tool_call") if e.tool_call.call.arguments_json == "{}"}
    assert len(ran) >= 2, got.kinds
    results = {r.tool_result.call_id: r.tool_result for r in of(got, "tool_result")}
    assert all(json.loads(results[call_id].result_json) == {"slept_s": NAP_S} for call_id in ran)
    # Every nap was asleep at one moment (the latest start precedes the earliest end), the gateway's spans too.
    assert len(LEDGER.naps) == len(ran)
    assert max(start for start, _ in LEDGER.naps) < min(end for _, end in LEDGER.naps)
    spans = [s for s in got.completion.timings.stages if s.call_id in ran]
    assert len(spans) == len(ran) and max(s.start_ms for s in spans) < min(s.end_ms for s in spans)
    assert max(s.end_ms for s in spans) - min(s.start_ms for s in spans) < 2 * NAP_S * 1000
    timings = got.completion.timings
    assert timings.tools_ms == pytest.approx(max(s.end_ms for s in spans) - min(s.start_ms for s in spans))


async def test_a_tool_past_its_timeout_is_an_error_result_and_the_loop_goes_on(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
) -> None:
    got = await collect(gateway.Generate(agent_request("stall", choice=named("stall"), max_steps=2), timeout=60))
    (result,) = of(got, "tool_result")
    assert result.tool_result.error.status.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    (degraded,) = of(got, "degraded")
    assert degraded.degraded.stage == f"tool:{result.tool_result.call_id}"
    assert [e.step_end.step for e in of(got, "step_end")] == [1, 2]
    assert [d.stage for d in got.completion.degraded] == [degraded.degraded.stage]


async def test_a_call_the_model_cut_short_is_an_error_result_not_a_crash(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
) -> None:
    """Parallel calls with little room: the step's last call is cut by max_tokens, and the parser hands over what
    it read; the gateway answers it with INVALID_ARGUMENT naming arguments_json, the model reads it next step."""
    request = agent_request("weather", choice=REQUIRED, max_steps=2, parallel=True)
    got = await collect(gateway.Generate(request, timeout=60))
    errors = [r.tool_result for r in of(got, "tool_result") if r.tool_result.HasField("error")]
    assert errors and all(e.error.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] for e in errors)
    assert all("arguments_json" in e.error.status.message for e in errors)
    assert [e.step_end.step for e in of(got, "step_end")] == [1, 2] and got.kinds[-1] == "complete"


async def test_client_functions_end_the_stream_and_the_next_request_continues(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
) -> None:
    schema: dict[str, object] = {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}}
    schema |= {"required": ["zone"], "additionalProperties": False}
    clock = common_pb2.FunctionDeclaration(name="get_time", parameters_json_schema=json.dumps(schema))
    request = agent_request(functions=(clock,), choice=REQUIRED)
    got = await collect(gateway.Generate(request, timeout=60))
    (called,) = of(got, "tool_call")
    assert called.tool_call.executor == CLIENT and called.tool_call.call.name == "get_time"
    assert "tool_result" not in got.kinds
    assert got.kinds[-2:] == ["step_end", "complete"] and got.completion.finish_reason == TOOL_CALLS

    follow = agent_request(functions=(clock,), max_steps=1, question="")
    follow.ClearField("question")
    call = called.tool_call.call
    follow.messages.extend(
        [
            common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=[common_pb2.ContentPart(text=request.question)]),
            common_pb2.ChatMessage(role=common_pb2.ROLE_ASSISTANT, tool_calls=[call]),
            common_pb2.ChatMessage(
                role=common_pb2.ROLE_TOOL,
                content=[common_pb2.ContentPart(text='{"time": "12:00"}')],
                tool_call_id=call.call_id,
            ),
        ]
    )
    answered = await collect(gateway.Generate(follow, timeout=60))
    assert "tool_call" not in answered.kinds and answered.text.strip()
    assert answered.completion.finish_reason != TOOL_CALLS


async def test_cancelling_mid_tool_cancels_the_tool(gateway: gateway_pb2_grpc.GatewayServiceStub) -> None:
    LEDGER.clear()
    call = gateway.Generate(agent_request("hang", choice=named("hang"), max_steps=2), timeout=60)
    async for event in call:
        if event.HasField("step_end"):
            break
    await LEDGER.wait(lambda: LEDGER.started == 1)
    cancelled_at = time.monotonic()
    call.cancel()
    await LEDGER.wait(lambda: LEDGER.cancelled == 1, timeout_s=5.0)
    took_s = time.monotonic() - cancelled_at
    assert took_s < 0.1, f"the tool was cancelled {took_s * 1000:.0f} ms after the client"


@pytest.mark.parametrize("step", [1, 2])
async def test_cancelling_mid_generation_frees_the_engine(
    running: AgentsMesh, gateway: gateway_pb2_grpc.GatewayServiceStub, monkeypatch: pytest.MonkeyPatch, step: int
) -> None:
    """Step 1's generation, or step 2's after the tool ran (step 1 under the tool's grammar, which ignore_eos
    does not go with: the forced answer runs up to max_tokens at 20 ms a token more)."""
    from services.inference.models.llama import LlamaForCausalLM

    monkeypatch.setattr(LlamaForCausalLM, "forward", LlamaForCausalLM.forward)  # put back after the test
    slow_down_forward(0.02)  # a step takes 20 ms more: the answer cannot end on its own within the test
    if step == 1:
        none = common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_NONE)
        request = agent_request("weather", choice=none, max_steps=2, max_tokens=200)
        request.sampling.ignore_eos = True
    else:
        request = agent_request("weather", choice=named("weather"), max_steps=2, max_tokens=200)
    async with grpc.aio.insecure_channel(running.inference) as channel:
        inference = inference_pb2_grpc.InferenceServiceStub(channel)
        call = gateway.Generate(request, timeout=60)
        results = 0
        async for event in call:
            results += event.HasField("tool_result")
            if event.HasField("delta") and event.delta.text and results == step - 1:
                break
        assert (await inference.GetLoad(inference_pb2.GetLoadRequest(), timeout=5)).running == 1
        cancelled_at = time.monotonic()
        call.cancel()
        while (await inference.GetLoad(inference_pb2.GetLoadRequest(), timeout=5)).running:
            assert time.monotonic() - cancelled_at < 5.0, "the engine still runs the cancelled answer"
            await asyncio.sleep(0.005)
    took_s = time.monotonic() - cancelled_at
    assert took_s < 0.1, f"the engine was freed {took_s * 1000:.0f} ms after the client cancelled (step {step})"


async def test_with_require_all_stages_the_model_s_mistake_is_a_failed_precondition(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
) -> None:
    """The call cut short by max_tokens (as above) is the model's mistake: the client sent no arguments_json."""
    request = agent_request("weather", choice=REQUIRED, max_steps=2, parallel=True)
    request.require_all_stages = True
    call = gateway.Generate(request, timeout=60)
    kinds: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        async for event in call:
            kinds.append(str(event.WhichOneof("event")))
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION, failed.value.details()
    assert re.match(r"tool:call_[A-Za-z0-9]{24} failed: .*arguments_json", failed.value.details() or "")
    assert "step_end" in kinds and "complete" not in kinds


async def test_a_job_with_tools_keeps_the_messages_and_steps(channel: grpc.aio.Channel) -> None:
    jobs = jobs_pb2_grpc.JobServiceStub(channel)
    submitted = await jobs.SubmitJob(
        jobs_pb2.SubmitJobRequest(request=agent_request("weather", choice=REQUIRED, max_steps=2)), timeout=10
    )
    async for watched in jobs.WatchJob(jobs_pb2.WatchJobRequest(id=submitted.job.id), timeout=60):
        if watched.HasField("job"):
            job = watched.job
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, job
    result = job.result
    assert [s.step for s in result.steps] == [1, 2]
    roles = [m.role for m in result.output_messages]
    assert roles == [common_pb2.ROLE_ASSISTANT, common_pb2.ROLE_TOOL, common_pb2.ROLE_ASSISTANT]
    (call,) = result.output_messages[0].tool_calls
    assert result.output_messages[1].tool_call_id == call.call_id and CALL_ID.fullmatch(call.call_id)
