"""A client's long strings are quoted, not copied, into error statuses: a 10,000-character job id, tool name or
collection name gets its real code (NOT_FOUND, INVALID_ARGUMENT) with small trailers, never RESOURCE_EXHAUSTED
for trailers the client refuses; whatever a request holds, a status's trailers stay a few KB. ToolCall.call_id
is at most 64 printable ASCII characters, at the gateway and at the tools service."""

from __future__ import annotations

import grpc
import pytest
from support.streams import collect, violated_fields

from genmesh.status import error_info
from genmesh.v1 import (
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
    tools_pb2,
    tools_pb2_grpc,
)

LONG = 10_000
#: A status quoting a client's string must stay this small (message plus every trailer).
SMALL_BYTES = 1024
#: A status of any request at all: far below the 8 KB of metadata a client accepts by default.
BOUNDED_BYTES = 4096


def _trailer_bytes(error: grpc.aio.AioRpcError) -> int:
    metadata = error.trailing_metadata() or ()
    return sum(len(key) + len(value) for key, value in metadata) + len(error.details() or "")


def _assert_small(error: grpc.aio.AioRpcError, code: grpc.StatusCode, quoted: int | None = LONG) -> None:
    """``error`` has ``code`` and small trailers, and quotes ``quoted`` characters of a string by their count."""
    assert error.code() == code, (error.code(), (error.details() or "")[:200])
    assert _trailer_bytes(error) < SMALL_BYTES, _trailer_bytes(error)
    assert quoted is None or f"({quoted} characters)" in (error.details() or ""), error.details()


async def test_a_long_job_id_is_not_found(channels: dict[str, grpc.aio.Channel]) -> None:
    jobs = jobs_pb2_grpc.JobServiceStub(channels["gateway"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs.GetJob(jobs_pb2.GetJobRequest(id="j" * LONG), timeout=10)
    _assert_small(caught.value, grpc.StatusCode.NOT_FOUND)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs.CancelJob(jobs_pb2.CancelJobRequest(id="j" * LONG), timeout=10)
    _assert_small(caught.value, grpc.StatusCode.NOT_FOUND)


async def test_a_long_tool_name_is_not_found(tools: tools_pb2_grpc.ToolsServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tools.Invoke(tools_pb2.InvokeRequest(call=common_pb2.ToolCall(name="t" * LONG)), timeout=10)
    _assert_small(caught.value, grpc.StatusCode.NOT_FOUND)


async def test_a_long_tool_name_at_the_gateway(gateway: gateway_pb2_grpc.GatewayServiceStub) -> None:
    request = gateway_pb2.GatewayRequest(question="What is a generator?")
    request.tool_calls.add(name="t" * LONG)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(gateway.Generate(request, timeout=30))
    _assert_small(caught.value, grpc.StatusCode.INVALID_ARGUMENT)


async def test_a_long_collection_or_ingest_id(retrieval: retrieval_pb2_grpc.RetrievalServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await retrieval.Query(retrieval_pb2.QueryRequest(text="sockets", collection="c" * LONG), timeout=10)
    _assert_small(caught.value, grpc.StatusCode.INVALID_ARGUMENT, None)  # a name check, which quotes nothing
    assert "collection" in violated_fields(caught.value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # ingest ids may be 256 characters long
        await retrieval.GetIngestProgress(retrieval_pb2.GetIngestProgressRequest(ingest_id="i" * 256), timeout=10)
    _assert_small(caught.value, grpc.StatusCode.NOT_FOUND, 256)


async def test_many_long_violations_stay_within_a_few_kb(retrieval: retrieval_pb2_grpc.RetrievalServiceStub) -> None:
    documents = [
        retrieval_pb2.Document(id=f"d{i}", text="text", metadata={"k" * 1000 + str(i): "v"}) for i in range(400)
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await retrieval.Upsert(retrieval_pb2.UpsertRequest(collection="bounded", documents=documents), timeout=30)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.code()
    assert _trailer_bytes(error) < BOUNDED_BYTES, _trailer_bytes(error)
    fields = violated_fields(error)
    assert fields[0] == "documents[0].metadata" and 1 <= len(fields) < 400
    info = error_info(error)
    assert info is not None and int(info.metadata["omittedViolations"]) == 400 - len(fields)


async def test_call_id_is_bounded_at_the_gateway(gateway: gateway_pb2_grpc.GatewayServiceStub) -> None:
    for call_id in ("c" * LONG, "c" * 65, "café"):
        request = gateway_pb2.GatewayRequest(question="What is a generator?")
        request.tool_calls.add(call_id=call_id, name="calculator", arguments_json='{"expression": "1+1"}')
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(gateway.Generate(request, timeout=30))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(caught.value) == ["tool_calls[0].call_id"], call_id[:80]
        assert _trailer_bytes(caught.value) < SMALL_BYTES


async def test_call_id_is_bounded_at_the_tools_service(tools: tools_pb2_grpc.ToolsServiceStub) -> None:
    for call_id in ("c" * LONG, "c" * 65, "tab\there"):
        call = common_pb2.ToolCall(call_id=call_id, name="calculator", arguments_json='{"expression": "1+1"}')
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await tools.Invoke(tools_pb2.InvokeRequest(call=call), timeout=10)
        assert violated_fields(caught.value) == ["call.call_id"], call_id[:80]
        many = tools.InvokeMany(tools_pb2.InvokeManyRequest(calls=[common_pb2.ToolCall(name="clock"), call]))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in many:
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(caught.value) == ["calls[1].call_id"], call_id[:80]
    longest = "i" * 64
    call = common_pb2.ToolCall(call_id=longest, name="calculator", arguments_json='{"expression": "1+1"}')
    answered = await tools.Invoke(tools_pb2.InvokeRequest(call=call), timeout=10)
    assert answered.result.call_id == longest
