"""The relay over a real gRPC stream: a stalled consumer finds one merged delta; failures and early exits travel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast

import grpc
import pytest
from inprocess import unimplemented
from support.chaos import heap_in_use_bytes

from gateway.relay import relay
from genmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc

DELTAS = 1500
TEXT_BYTES = 200
PAYLOAD_BYTES = DELTAS * TEXT_BYTES


def _text(i: int) -> str:
    return f"<{i:05d}>".ljust(TEXT_BYTES, ".")


def _delta(i: int) -> inference_pb2.GenerateResponse:
    return inference_pb2.GenerateResponse(delta=common_pb2.TokenDelta(token_ids=[i], text=_text(i)))


class Upstream(inference_pb2_grpc.InferenceServiceServicer):
    """Generate streams ``deltas`` deltas as fast as gRPC takes them, then a Completion (or fails with ``fault``
    instead), or streams without end when ``endless``; ``sent`` is set after its last message."""

    def __init__(self) -> None:
        self.deltas = DELTAS
        self.fault: grpc.StatusCode | None = None
        self.endless = False
        self.sent = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateResponse]:
        try:
            i = 0
            while self.endless or i < self.deltas:
                yield _delta(i)
                i += 1
                if self.endless:
                    await asyncio.sleep(0.001)
            if self.fault is not None:
                self.sent.set()
                await context.abort(self.fault, "engine died")
            usage = common_pb2.Usage(completion_tokens=self.deltas)
            yield inference_pb2.GenerateResponse(complete=common_pb2.Completion(usage=usage))
            self.sent.set()
        except (asyncio.CancelledError, GeneratorExit):  # cancelled at an await, or closed at a yield
            self.cancelled.set()
            raise

    async def Abort(self, request: object, context: grpc.aio.ServicerContext) -> inference_pb2.AbortResponse:
        await unimplemented(context)

    async def GetModelInfo(
        self, request: object, context: grpc.aio.ServicerContext
    ) -> inference_pb2.GetModelInfoResponse:
        await unimplemented(context)

    async def GetLoad(self, request: object, context: grpc.aio.ServicerContext) -> inference_pb2.GetLoadResponse:
        await unimplemented(context)

    async def CountTokens(
        self, request: object, context: grpc.aio.ServicerContext
    ) -> inference_pb2.CountTokensResponse:
        await unimplemented(context)

    async def WatchLoad(
        self, request: object, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.WatchLoadResponse]:
        await unimplemented(context)
        yield inference_pb2.WatchLoadResponse()  # never reached: makes this a streaming handler


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, inference_pb2_grpc.InferenceServiceStub]]:
    servicer = Upstream()
    server = grpc.aio.server()
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield servicer, inference_pb2_grpc.InferenceServiceStub(channel)
    await channel.close()
    await server.stop(None)


async def _until_done(call: grpc.aio.UnaryStreamCall) -> None:
    """Until the call has its status: every message has been read off it (by the relay, not by its consumer)."""
    async with asyncio.timeout(30):
        while not call.done():
            await asyncio.sleep(0.01)


async def test_a_stalled_consumer_finds_one_merged_delta_then_the_completion(
    upstream: tuple[Upstream, inference_pb2_grpc.InferenceServiceStub],
) -> None:
    servicer, stub = upstream
    before = heap_in_use_bytes()
    call = stub.Generate(inference_pb2.GenerateRequest(prompt="x"))
    stream = relay(call)
    first = await anext(stream)
    await servicer.sent.wait()
    await _until_done(call)  # the relay read all 1500 deltas while its consumer read none
    held = heap_in_use_bytes() - before
    rest = [message async for message in stream]

    assert [message.WhichOneof("event") for message in rest] == ["delta", "complete"]
    merged = rest[0].delta
    assert first.delta.text + merged.text == "".join(_text(i) for i in range(DELTAS)), "no text lost or reordered"
    assert [*first.delta.token_ids, *merged.token_ids] == list(range(DELTAS))
    assert rest[1].complete.usage.completion_tokens == DELTAS
    # What waits for the consumer is about the size of the text (300 KB), not a copy per merge (~225 MB).
    assert held < 10 * PAYLOAD_BYTES, f"the relay held {held / 1e6:.1f} MB for {PAYLOAD_BYTES / 1e6:.1f} MB of deltas"


async def test_a_failure_after_some_deltas_reaches_the_consumer_after_them(
    upstream: tuple[Upstream, inference_pb2_grpc.InferenceServiceStub],
) -> None:
    servicer, stub = upstream
    servicer.deltas, servicer.fault = 10, grpc.StatusCode.UNAVAILABLE
    call = stub.Generate(inference_pb2.GenerateRequest(prompt="x"))
    stream = relay(call)
    first = await anext(stream)
    await servicer.sent.wait()
    await _until_done(call)
    seen = list(first.delta.token_ids)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in stream:
            seen.extend(message.delta.token_ids)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert seen == list(range(10)), "every delta read before the failure is relayed first"


async def test_leaving_the_relay_cancels_the_upstream_call(
    upstream: tuple[Upstream, inference_pb2_grpc.InferenceServiceStub],
) -> None:
    servicer, stub = upstream
    servicer.endless = True
    call = stub.Generate(inference_pb2.GenerateRequest(prompt="x"))
    stream = cast(AsyncGenerator[inference_pb2.GenerateResponse], relay(call))  # what relay() is
    await anext(stream)
    await stream.aclose()
    async with asyncio.timeout(10):
        await servicer.cancelled.wait()
    assert call.cancelled()
