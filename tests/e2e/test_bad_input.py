"""Client mistakes get INVALID_ARGUMENT (or NOT_FOUND) naming the field, at every service; never UNKNOWN/INTERNAL."""

from __future__ import annotations

import math

import grpc
import pytest
from support.streams import collect, violated_fields

from genmesh.v1 import (
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
    tools_pb2,
    tools_pb2_grpc,
)


def _ask(question: str = "What is a generator?", **sampling: float) -> gateway_pb2.GatewayRequest:
    request = gateway_pb2.GatewayRequest(question=question)
    for knob, value in sampling.items():
        setattr(request.sampling, knob, value)
    return request


def _with_tool(name: str, arguments: str) -> gateway_pb2.GatewayRequest:
    request = _ask()
    request.tool_calls.add(name=name, arguments_json=arguments)
    return request


GATEWAY_CASES = {
    "empty question": (_ask(""), "question"),
    "blank question": (_ask("   \n"), "question"),
    "huge question": (_ask("why " * 2000), "question"),
    "negative max_tokens": (_ask(max_tokens=-1), "sampling.max_tokens"),
    "zero max_tokens": (_ask(max_tokens=0), "sampling.max_tokens"),
    "huge max_tokens": (_ask(max_tokens=1_000_000), "sampling.max_tokens"),
    "negative temperature": (_ask(temperature=-0.5), "sampling.temperature"),
    "temperature too high": (_ask(temperature=7.0), "sampling.temperature"),
    "NaN temperature": (_ask(temperature=math.nan), "sampling.temperature"),
    "infinite temperature": (_ask(temperature=math.inf), "sampling.temperature"),
    "top_p zero": (_ask(top_p=0.0), "sampling.top_p"),
    "negative top_k": (_ask(top_k=-3), "sampling.top_k"),
    "unknown tool": (_with_tool("teleport", "{}"), "tool_calls[0].name"),
    "arguments fail the schema": (
        _with_tool("calculator", '{"expression": 12}'),
        "tool_calls[0].arguments_json.expression",
    ),
    "missing required argument": (_with_tool("calculator", "{}"), "tool_calls[0].arguments_json.expression"),
    "extra argument": (
        _with_tool("calculator", '{"expression": "1", "mode": "x"}'),
        "tool_calls[0].arguments_json.mode",
    ),
    "arguments not JSON": (_with_tool("calculator", "{expression"), "tool_calls[0].arguments_json"),
    "calculator refuses names": (
        _with_tool("calculator", '{"expression": "__import__(\'os\')"}'),
        "tool_calls[0].arguments_json.expression",
    ),
}


@pytest.mark.parametrize("case", list(GATEWAY_CASES))
async def test_gateway_names_the_bad_field(gateway: gateway_pb2_grpc.GatewayServiceStub, case: str) -> None:
    request, field = GATEWAY_CASES[case]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(gateway.Generate(request, timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert field in violated_fields(caught.value)
    assert field in (caught.value.details() or "")


async def test_gateway_reports_every_bad_field_at_once(gateway: gateway_pb2_grpc.GatewayServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(gateway.Generate(_ask("", max_tokens=-1, temperature=math.nan), timeout=30))
    assert set(violated_fields(caught.value)) == {"question", "sampling.max_tokens", "sampling.temperature"}


async def test_unknown_collection_is_not_found(gateway: gateway_pb2_grpc.GatewayServiceStub) -> None:
    request = _ask()
    request.retrieval.collection = "no-such-collection"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(gateway.Generate(request, timeout=30))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_inference_rejects_bad_requests(inference: inference_pb2_grpc.InferenceServiceStub) -> None:
    cases = [
        (inference_pb2.GenerateRequest(prompt=""), "prompt"),
        (
            inference_pb2.GenerateRequest(prompt="x", sampling=common_pb2.SamplingParams(max_tokens=-5)),
            "sampling.max_tokens",
        ),
        (
            inference_pb2.GenerateRequest(prompt="x", sampling=common_pb2.SamplingParams(logprobs=99)),
            "sampling.logprobs",
        ),
        (inference_pb2.GenerateRequest(prompt="the " * 5000), "prompt"),
    ]
    for request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in inference.Generate(request, timeout=30):
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, caught.value.details())
        assert field in violated_fields(caught.value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await inference.Abort(inference_pb2.AbortRequest(), timeout=5)
    assert violated_fields(caught.value) == ["request_id"]


async def test_retrieval_rejects_bad_requests(retrieval: retrieval_pb2_grpc.RetrievalServiceStub) -> None:
    for request, field in [
        (retrieval_pb2.QueryRequest(text=""), "text"),
        (retrieval_pb2.QueryRequest(text="yield", top_k=0), "top_k"),
        (retrieval_pb2.QueryRequest(text="yield", top_k=100_000), "top_k"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await retrieval.Query(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in violated_fields(caught.value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await retrieval.Query(retrieval_pb2.QueryRequest(text="yield", collection="nope"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_tools_reject_bad_requests(tools: tools_pb2_grpc.ToolsServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tools.Invoke(tools_pb2.InvokeRequest(call=common_pb2.ToolCall(name="teleport")), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    bad = common_pb2.ToolCall(name="clock", arguments_json='{"timezone": "Mars/Olympus"}')
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tools.Invoke(tools_pb2.InvokeRequest(call=bad), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == ["call.arguments_json.timezone"]
