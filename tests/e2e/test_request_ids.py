"""request_id on every service: 1..128 printable ASCII or INVALID_ARGUMENT; the effective id echoed in metadata."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import grpc
import pytest
from support.streams import violated_fields

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

Metadata: TypeAlias = tuple[tuple[str, str], ...]
Call: TypeAlias = grpc.aio.UnaryUnaryCall | grpc.aio.UnaryStreamCall
CallMaker: TypeAlias = Callable[[dict[str, grpc.aio.Channel], str, Metadata], Call]


def _gateway(channels: dict[str, grpc.aio.Channel], request_id: str, metadata: Metadata) -> Call:
    request = gateway_pb2.GatewayRequest(request_id=request_id, question="What does yield do?")
    request.retrieval.disabled = True
    request.sampling.max_tokens = 1
    return gateway_pb2_grpc.GatewayServiceStub(channels["gateway"]).Generate(request, metadata=metadata, timeout=60)


def _inference(channels: dict[str, grpc.aio.Channel], request_id: str, metadata: Metadata) -> Call:
    sampling = common_pb2.SamplingParams(max_tokens=1)
    request = inference_pb2.GenerateRequest(request_id=request_id, prompt="The yield statement", sampling=sampling)
    stub = inference_pb2_grpc.InferenceServiceStub(channels["inference"])
    return stub.Generate(request, metadata=metadata, timeout=60)


def _retrieval(channels: dict[str, grpc.aio.Channel], request_id: str, metadata: Metadata) -> Call:
    request = retrieval_pb2.QueryRequest(request_id=request_id, text="yield", top_k=1)
    return retrieval_pb2_grpc.RetrievalServiceStub(channels["retrieval"]).Query(request, metadata=metadata, timeout=60)


def _tools(channels: dict[str, grpc.aio.Channel], request_id: str, metadata: Metadata) -> Call:
    call = common_pb2.ToolCall(name="calculator", arguments_json='{"expression": "6*7"}')
    request = tools_pb2.InvokeRequest(request_id=request_id, call=call)
    return tools_pb2_grpc.ToolsServiceStub(channels["tools"]).Invoke(request, metadata=metadata, timeout=60)


SERVICES: dict[str, CallMaker] = {
    "gateway": _gateway,
    "inference": _inference,
    "retrieval": _retrieval,
    "tools": _tools,
}


async def _echoed(call: Call) -> str:
    """Run the call to its end; the x-request-id it echoed."""
    if isinstance(call, grpc.aio.UnaryStreamCall):
        async for _ in call:
            pass
    else:
        await call
    trailing = dict(await call.trailing_metadata() or ())
    return str(trailing["x-request-id"])


async def _refused(call: Call) -> list[str]:
    """The field violations of a call that must fail with INVALID_ARGUMENT."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _echoed(call)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    assert "request_id" in (caught.value.details() or "")
    fields: list[str] = violated_fields(caught.value)
    return fields


@pytest.mark.parametrize("service", SERVICES)
async def test_the_id_is_echoed_and_the_field_wins_over_the_header(
    service: str, channels: dict[str, grpc.aio.Channel]
) -> None:
    make = SERVICES[service]
    longest = f"{service}-".ljust(128, "~")
    assert await _echoed(make(channels, longest, ())) == longest, "128 printable characters are an id"
    spaced = f"{service} id with spaces & {{punctuation}}"
    assert await _echoed(make(channels, spaced, ())) == spaced
    header = f"{service}-from-header"
    assert await _echoed(make(channels, "", (("x-request-id", header),))) == header, "without the field: the header"
    field = f"{service}-from-field"
    assert await _echoed(make(channels, field, (("x-request-id", header),))) == field, "the field wins"


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize(
    "bad",
    ["x" * 129, "line\nbreak", "tab\there", "caf\u00e9", "\x7f"],
    ids=["129-chars", "newline", "tab", "non-ascii", "del"],
)
async def test_a_bad_id_is_invalid_argument_naming_request_id(
    service: str, bad: str, channels: dict[str, grpc.aio.Channel]
) -> None:
    assert await _refused(SERVICES[service](channels, bad, ())) == ["request_id"]


@pytest.mark.parametrize("service", SERVICES)
async def test_a_header_id_follows_the_same_rules(service: str, channels: dict[str, grpc.aio.Channel]) -> None:
    assert await _refused(SERVICES[service](channels, "", (("x-request-id", "h" * 129),))) == ["request_id"]
