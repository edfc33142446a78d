"""The interceptor's request_id rules on a real in-process gRPC server, for unary and streaming calls alike."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from support.streams import violated_fields

from genmesh.interceptor import ServiceInterceptor
from genmesh.v1 import inference_pb2, retrieval_pb2

Metadata = tuple[tuple[str, str], ...]


class Handlers:
    """Query (unary) and Generate (streaming) that only count their calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def query(self, request: retrieval_pb2.QueryRequest, context: grpc.aio.ServicerContext) -> Any:
        self.calls += 1
        return retrieval_pb2.QueryResponse()

    async def generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateResponse]:
        self.calls += 1
        yield inference_pb2.GenerateResponse()


@pytest.fixture
async def served() -> AsyncIterator[tuple[Handlers, grpc.aio.Channel]]:
    handlers = Handlers()
    server = grpc.aio.server(interceptors=[ServiceInterceptor()])
    query = grpc.unary_unary_rpc_method_handler(
        handlers.query,
        request_deserializer=retrieval_pb2.QueryRequest.FromString,
        response_serializer=retrieval_pb2.QueryResponse.SerializeToString,
    )
    generate = grpc.unary_stream_rpc_method_handler(
        handlers.generate,
        request_deserializer=inference_pb2.GenerateRequest.FromString,
        response_serializer=inference_pb2.GenerateResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler("genmesh.v1.RetrievalService", {"Query": query}),
            grpc.method_handlers_generic_handler("genmesh.v1.InferenceService", {"Generate": generate}),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield handlers, channel
    await channel.close()
    await server.stop(None)


async def _call(channel: grpc.aio.Channel, kind: str, request_id: str, metadata: Metadata = ()) -> tuple[str, str]:
    """Make a ``kind`` call; the x-request-id of its initial and of its trailing metadata ("" where absent)."""
    call: grpc.aio.UnaryUnaryCall | grpc.aio.UnaryStreamCall
    if kind == "unary":
        unary = channel.unary_unary(
            "/genmesh.v1.RetrievalService/Query",
            request_serializer=retrieval_pb2.QueryRequest.SerializeToString,
            response_deserializer=retrieval_pb2.QueryResponse.FromString,
        )
        call = unary(retrieval_pb2.QueryRequest(request_id=request_id), metadata=metadata, timeout=10)
        await call
    else:
        streaming = channel.unary_stream(
            "/genmesh.v1.InferenceService/Generate",
            request_serializer=inference_pb2.GenerateRequest.SerializeToString,
            response_deserializer=inference_pb2.GenerateResponse.FromString,
        )
        call = streaming(inference_pb2.GenerateRequest(request_id=request_id), metadata=metadata, timeout=10)
        async for _ in call:
            pass
    initial = dict(await call.initial_metadata() or ())
    trailing = dict(await call.trailing_metadata() or ())
    return str(initial.get("x-request-id", "")), str(trailing.get("x-request-id", ""))


KINDS = ["unary", "stream"]


@pytest.mark.parametrize("kind", KINDS)
async def test_the_field_then_the_header_is_the_id_echoed(kind: str, served: tuple[Handlers, grpc.aio.Channel]) -> None:
    _, channel = served
    longest = "~" * 128
    assert await _call(channel, kind, longest) == ("", longest)
    assert await _call(channel, kind, "", (("x-request-id", "from-header"),)) == ("", "from-header")
    assert await _call(channel, kind, "from-field", (("x-request-id", "from-header"),)) == ("", "from-field")


@pytest.mark.parametrize("kind", KINDS)
async def test_without_one_an_id_is_made_and_sent_at_once(kind: str, served: tuple[Handlers, grpc.aio.Channel]) -> None:
    _, channel = served
    initial, trailing = await _call(channel, kind, "")
    assert re.fullmatch("[0-9a-f]{32}", initial) and trailing == initial


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("request_id", "header"),
    [("x" * 129, ""), ("line\nbreak", ""), ("caf\u00e9", ""), ("\x1f", ""), ("", "h" * 129)],
    ids=["129-chars", "newline", "non-ascii", "control", "long-header"],
)
async def test_a_bad_id_is_refused_before_the_handler_runs(
    kind: str, request_id: str, header: str, served: tuple[Handlers, grpc.aio.Channel]
) -> None:
    handlers, channel = served
    metadata: Metadata = (("x-request-id", header),) if header else ()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(channel, kind, request_id, metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == ["request_id"]
    assert "1..128 printable ASCII characters" in (caught.value.details() or "")
    assert handlers.calls == 0
