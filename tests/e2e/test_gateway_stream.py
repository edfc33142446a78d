"""A streamed answer through the gateway: order of events, text, usage, timings, request ids."""

from __future__ import annotations

import json

from support.streams import collect

from genmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, inference_pb2, inference_pb2_grpc


def _request(**sampling: float | int) -> gateway_pb2.GatewayRequest:
    request = gateway_pb2.GatewayRequest(
        request_id="stream-order-1",
        question="How does the with statement use a context manager?",
        tool_calls=[
            common_pb2.ToolCall(call_id="sum", name="calculator", arguments_json='{"expression": "6*7"}'),
            common_pb2.ToolCall(call_id="now", name="clock", arguments_json='{"timezone": "Europe/Paris"}'),
        ],
    )
    request.sampling.max_tokens = int(sampling.get("max_tokens", 24))
    request.sampling.temperature = float(sampling.get("temperature", 0.0))
    return request


async def test_events_arrive_in_order_and_add_up(gateway: gateway_pb2_grpc.GatewayServiceStub) -> None:
    call = gateway.Generate(_request(), timeout=60)
    got = await collect(call)

    first_delta = got.kinds.index("delta")
    assert set(got.kinds[:first_delta]) == {"sources", "tool_result"}
    assert got.kinds[:first_delta].count("tool_result") == 2
    assert set(got.kinds[first_delta:-1]) == {"delta"}
    assert got.kinds[-1] == "complete"
    assert got.kinds.count("complete") == 1

    sources = next(e.sources for e in got.events if e.HasField("sources"))
    assert [p.rank for p in sources.passages] == list(range(1, len(sources.passages) + 1))
    assert any("with" in p.title.lower() or "context" in p.title.lower() for p in sources.passages)

    results = {e.tool_result.call_id: e.tool_result for e in got.events if e.HasField("tool_result")}
    assert json.loads(results["sum"].result_json)["value"] == 42
    assert json.loads(results["now"].result_json)["timezone"] == "Europe/Paris"

    done = got.completion
    assert got.text, "the answer has text"
    assert done.usage.completion_tokens == len(got.token_ids)
    assert done.usage.prompt_tokens > 0
    assert done.finish_reason in (common_pb2.FINISH_REASON_LENGTH, common_pb2.FINISH_REASON_STOP)
    if done.finish_reason == common_pb2.FINISH_REASON_LENGTH:
        assert done.usage.completion_tokens == 24
    t = done.timings
    assert 0 < t.pre_inference_ms <= t.time_to_first_token_ms <= t.total_ms
    assert {s.stage for s in t.stages} == {"retrieval", "tool:sum", "tool:now", "inference"}
    assert dict(await call.trailing_metadata())["x-request-id"] == "stream-order-1"


async def test_gateway_answer_matches_the_model(
    gateway: gateway_pb2_grpc.GatewayServiceStub, inference: inference_pb2_grpc.InferenceServiceStub
) -> None:
    """Greedy decoding through the gateway gives exactly the tokens inference gives for the same prompt."""
    request = _request(max_tokens=16)
    request.ClearField("tool_calls")
    request.retrieval.disabled = True
    via_gateway = await collect(gateway.Generate(request, timeout=60))

    direct = inference.Generate(
        inference_pb2.GenerateRequest(prompt=f"Question: {request.question}\nAnswer:", sampling=request.sampling),
        timeout=60,
    )
    token_ids = [t async for m in direct if m.HasField("delta") for t in m.delta.token_ids]
    assert via_gateway.token_ids == token_ids


async def test_request_id_is_generated_when_missing(gateway: gateway_pb2_grpc.GatewayServiceStub) -> None:
    request = _request(max_tokens=2)
    request.request_id = ""
    call = gateway.Generate(request, timeout=60)
    await collect(call)
    assert len(dict(await call.initial_metadata())["x-request-id"]) == 32
