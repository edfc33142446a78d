"""AsyncClient against a real gateway served in-process over scripted upstreams (tests/gateway/served.py): typed
events and whole answers, bad input as BadRequest naming each field, RESOURCE_EXHAUSTED retried after its
RetryInfo delay before the first event and never after it, per-call deadlines."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from inprocess import Fault, ScriptedTool
from served import served_gateway

from genmesh.client import (
    NO_RETRIES,
    AsyncClient,
    BadRequest,
    Complete,
    DeadlineExceeded,
    Delta,
    RateLimited,
    RetryPolicy,
    Sampling,
    Sources,
    Tool,
    ToolResult,
    Unavailable,
)
from genmesh.errors import Reason, ResourceExhausted
from genmesh.server import MAX_MESSAGE_BYTES

QUESTION = "What does yield do?"


def queue_full(retry_after_s: float, times: int | None) -> Fault:
    """The inference service's refusal of a full queue, as it sends it (RetryInfo, INFERENCE_QUEUE_FULL)."""
    rich = ResourceExhausted("the queue is full", retry_after_s, reason=Reason.INFERENCE_QUEUE_FULL)
    return Fault(grpc.StatusCode.RESOURCE_EXHAUSTED, times=times, rich=rich)


async def test_events_are_typed_and_in_order_and_answer_adds_them_up(tmp_path: Path) -> None:
    async with served_gateway(tmp_path, ScriptedTool("lookup"), metrics=False) as served:
        async with AsyncClient(served.address) as client:
            calls = [Tool("lookup", {"key": "yield"}, call_id="c1")]
            events = [e async for e in client.generate(QUESTION, tool_calls=calls, collection="notes")]
            answer = await client.answer(messages=[{"role": "user", "content": QUESTION}], top_k=1)
        (query, _) = served.upstreams.retrieval.requests
    kinds = [type(e) for e in events]
    assert set(kinds[:2]) == {Sources, ToolResult} and set(kinds[2:-1]) == {Delta} and kinds[-1] is Complete
    (tool,) = [e for e in events if isinstance(e, ToolResult)]
    assert (tool.call_id, tool.name, tool.result, tool.error) == ("c1", "lookup", {"value": 42}, None)
    assert query.collection == "notes"
    assert answer.text == "Generators yield values." and answer.finish_reason == "stop"
    assert [p.document_id for p in answer.sources] == ["yield"] and answer.sources[0].rank == 1
    assert answer.usage.completion_tokens == 3 and answer.timings.total_ms > 0
    assert {s.stage for s in answer.timings.stages} >= {"retrieval", "inference"}
    assert answer.tool_results == [] and answer.degraded == []


async def test_bad_input_is_a_bad_request_naming_each_field(tmp_path: Path) -> None:
    async with served_gateway(tmp_path, metrics=False) as served:
        async with AsyncClient(served.address) as client:
            with pytest.raises(BadRequest) as raised:
                await client.answer(QUESTION, sampling=Sampling(max_tokens=0, temperature=9))
            with pytest.raises(BadRequest) as neither:
                await client.answer()
        assert served.replicas.generate_counts() == [0]
    fields = [v.field for v in raised.value.field_violations]
    assert fields == ["sampling.max_tokens", "sampling.temperature"]
    assert raised.value.reason == Reason.INVALID_FIELD
    assert "question" in [v.field for v in neither.value.field_violations]


async def test_a_full_queue_is_retried_after_its_retry_info_delay_then_answers(tmp_path: Path) -> None:
    async with served_gateway(tmp_path) as served:
        inference = served.replicas.replicas[0].servicer
        inference.fault = queue_full(0.5, times=1)
        async with AsyncClient(served.address) as client:
            started = time.monotonic()
            answer = await client.answer(QUESTION, retrieval=False)
            took = time.monotonic() - started
        first, second = inference.requests
        samples = await served.scrape()
    assert answer.text == "Generators yield values."
    assert took >= 0.5  # the server's delay, not the client's 0.2 s backoff
    # one request, attempted twice: the same id (each inference attempt adds a suffix of its own)
    assert first.request_id.rsplit(".", 1)[0] == second.request_id.rsplit(".", 1)[0]
    generate = {"grpc_service": "genmesh.v1.GatewayService", "grpc_method": "Generate"}
    started_calls = [
        count
        for (name, labels), count in samples.items()
        if name == "genmesh_rpc_started_total" and generate.items() <= dict(labels).items()
    ]
    assert sum(started_calls) == 2  # the client called the gateway twice (the gateway did not retry on its own)


async def test_a_refusal_past_the_attempts_is_rate_limited_with_its_retry_after(tmp_path: Path) -> None:
    async with served_gateway(tmp_path, metrics=False) as served:
        served.replicas.replicas[0].servicer.fault = queue_full(0.25, times=None)
        async with AsyncClient(served.address, retry=NO_RETRIES) as client:
            with pytest.raises(RateLimited) as raised:
                await client.answer(QUESTION, retrieval=False)
        assert served.replicas.generate_counts() == [1]
    assert raised.value.retry_after_s == 0.25 and raised.value.reason == Reason.INFERENCE_QUEUE_FULL


async def test_grpcs_own_resource_exhausted_is_not_retried(tmp_path: Path) -> None:
    retry = RetryPolicy(attempts=3, backoff_s=1.0)
    async with served_gateway(tmp_path, metrics=False) as served, AsyncClient(served.address, retry=retry) as client:
        started = time.monotonic()
        with pytest.raises(RateLimited) as raised:  # over the 16 MiB message limit: refused by gRPC itself
            await client.answer("x" * (MAX_MESSAGE_BYTES + 1), retrieval=False)
        took = time.monotonic() - started
    assert "larger than max" in raised.value.message and raised.value.retry_after_s is None
    assert took < 1.0  # no backoff: the same message would be refused the same way


async def test_no_retry_once_a_token_was_received(tmp_path: Path) -> None:
    async with served_gateway(tmp_path, metrics=False) as served:
        inference = served.replicas.replicas[0].servicer
        inference.fault_after_first = queue_full(0.01, times=1)
        received: list[str] = []
        async with AsyncClient(served.address) as client:
            with pytest.raises(RateLimited):
                async for event in client.generate(QUESTION, retrieval=False):
                    if isinstance(event, Delta):
                        received.append(event.text)
        assert served.replicas.generate_counts() == [1]
    assert received == ["Generators "]


async def test_an_inference_service_that_is_down_is_unavailable(tmp_path: Path) -> None:
    async with served_gateway(tmp_path, metrics=False) as served:
        await served.replicas.stop()
        async with AsyncClient(served.address) as client:
            with pytest.raises(Unavailable):
                await client.answer(QUESTION, retrieval=False, timeout_s=30)


async def test_a_per_call_deadline_ends_a_slow_answer(tmp_path: Path) -> None:
    async with served_gateway(tmp_path, metrics=False) as served:
        inference = served.replicas.replicas[0].servicer
        inference.deltas, inference.delta_delay_s = [f"w{i} " for i in range(100)], 0.1
        async with AsyncClient(served.address, timeout_s=60) as client:
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                await client.answer(QUESTION, retrieval=False, timeout_s=0.5)
    assert time.monotonic() - started < 5
