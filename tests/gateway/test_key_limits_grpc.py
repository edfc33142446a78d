"""Per-key limits in the gateway's Generate over real gRPC: the refusal's details, tokens charged as they stream,
concurrent streams released on cancel; in-process scripted upstreams, the caller set by a header interceptor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from inprocess import ScriptedInference, ScriptedRetrieval, ScriptedTools
from support.api_keys import quota_violations

from gateway.admission import StreamLimiter
from gateway.auth.audit import AuditLog
from gateway.auth.caller import CALLER, Caller, Limits, Scope
from gateway.auth.limits import KeyLimiter
from gateway.circuit import CircuitConfig
from gateway.orchestrator import Orchestrator
from gateway.server import GatewayServicer
from gateway.upstreams import Upstreams, UpstreamTargets
from genmesh.errors import Reason
from genmesh.interceptor import ServiceInterceptor
from genmesh.status import error_info, retry_delay_s
from genmesh.v1 import (
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    retrieval_pb2_grpc,
    tools_pb2_grpc,
)

KEY_HEADER = "x-test-key"
Metadata = tuple[tuple[str, str], ...]
TOKENS_PER_DELTA = 10
REQUEST = gateway_pb2.GatewayRequest(
    question="What does yield do?", retrieval=gateway_pb2.RetrievalOptions(disabled=True)
)


class GatedInference(ScriptedInference):
    """Streams ``delta_count`` deltas of TOKENS_PER_DELTA tokens each; with ``gate`` set, holds every stream after
    its first delta until the gate opens."""

    def __init__(self) -> None:
        super().__init__()
        self.delta_count = 3
        self.gate: asyncio.Event | None = None

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateResponse]:
        for i in range(self.delta_count):
            ids = range(i * TOKENS_PER_DELTA, (i + 1) * TOKENS_PER_DELTA)
            yield inference_pb2.GenerateResponse(delta=common_pb2.TokenDelta(token_ids=ids, text=f"t{i} "))
            if i == 0 and self.gate is not None:
                await self.gate.wait()
        usage = common_pb2.Usage(completion_tokens=self.delta_count * TOKENS_PER_DELTA)
        complete = common_pb2.Completion(finish_reason=common_pb2.FINISH_REASON_STOP, usage=usage)
        yield inference_pb2.GenerateResponse(complete=complete)


class HeaderCaller(grpc.aio.ServerInterceptor):
    """Stands in for the API-key interceptor: the caller is the one the x-test-key header names."""

    def __init__(self, callers: dict[str, Caller]) -> None:
        self.callers = callers

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        metadata = dict(handler_call_details.invocation_metadata or ())
        CALLER.set(self.callers.get(str(metadata.get(KEY_HEADER, ""))))
        return await continuation(handler_call_details)


class Gateway:
    """A GatewayServicer with a KeyLimiter on a real loopback server, over gated scripted upstreams."""

    def __init__(self) -> None:
        self.inference = GatedInference()
        self.limiter = KeyLimiter(audit=AuditLog())
        self.callers: dict[str, Caller] = {}
        self._servers: list[grpc.aio.Server] = []
        self._upstreams: Upstreams | None = None
        self._channel: grpc.aio.Channel | None = None
        self.stub: gateway_pb2_grpc.GatewayServiceStub

    async def start(self) -> None:
        upstream = grpc.aio.server()
        retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(ScriptedRetrieval(), upstream)
        tools_pb2_grpc.add_ToolsServiceServicer_to_server(ScriptedTools(), upstream)
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(self.inference, upstream)
        address = f"127.0.0.1:{upstream.add_insecure_port('127.0.0.1:0')}"
        await upstream.start()
        self._upstreams = Upstreams(UpstreamTargets(address, address, address), CircuitConfig())
        gateway = grpc.aio.server(interceptors=[ServiceInterceptor(), HeaderCaller(self.callers)])
        servicer = GatewayServicer(Orchestrator(self._upstreams), StreamLimiter(64), self.limiter)
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, gateway)
        port = gateway.add_insecure_port("127.0.0.1:0")
        await gateway.start()
        self._servers = [gateway, upstream]
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)

    def key(self, name: str, limits: Limits) -> Metadata:
        """Register a caller; the metadata that names it."""
        self.callers[name] = Caller(f"apiKeys/{name}", name, frozenset({Scope.GENERATE}), limits)
        return ((KEY_HEADER, name),)

    async def stop(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        for server in self._servers:
            await server.stop(None)
        if self._upstreams is not None:
            await self._upstreams.close()


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    running = Gateway()
    await running.start()
    yield running
    await running.stop()


async def answer(gateway: Gateway, metadata: Metadata) -> list[gateway_pb2.GatewayEvent]:
    return [event async for event in gateway.stub.Generate(REQUEST, metadata=metadata)]


async def refusal(gateway: Gateway, metadata: Metadata) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await answer(gateway, metadata)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    return refused.value


async def test_past_its_requests_per_minute_a_key_gets_retry_info_and_the_limit_named(gateway: Gateway) -> None:
    limited = gateway.key("team-search", Limits(requests_per_minute=2))
    other = gateway.key("team-chat", Limits(requests_per_minute=2))
    for _ in range(2):
        assert (await answer(gateway, limited))[-1].HasField("complete")
    error = await refusal(gateway, limited)
    assert quota_violations(error) == [("apiKeys/team-search", "requests_per_minute: 2")]
    info = error_info(error)
    assert info is not None and info.reason == Reason.RATE_LIMITED
    delay = retry_delay_s(error)
    assert delay is not None and 25.0 < delay <= 30.0  # one request back at 2 a minute
    assert "requests_per_minute limit of 2" in str(error.details())
    assert (await answer(gateway, other))[-1].HasField("complete")  # another key is not affected
    assert (await answer(gateway, ()))[-1].HasField("complete")  # nor a call without a key


async def test_tokens_are_charged_as_they_stream_and_a_long_answer_makes_the_next_request_wait(
    gateway: Gateway,
) -> None:
    gateway.inference.delta_count = 5  # 50 tokens against a limit of 20: the answer is not cut
    metadata = gateway.key("team-search", Limits(tokens_per_minute=20))
    events = await answer(gateway, metadata)
    streamed = sum(len(event.delta.token_ids) for event in events if event.HasField("delta"))
    assert streamed == 50 and events[-1].complete.usage.completion_tokens == 50

    error = await refusal(gateway, metadata)
    assert quota_violations(error) == [("apiKeys/team-search", "tokens_per_minute: 20")]
    delay = retry_delay_s(error)
    assert delay is not None and 80.0 < delay <= 93.0  # 30 tokens of debt and one more, at 20 a minute


async def test_max_streams_then_refused_then_a_cancel_frees_a_slot_and_nothing_is_lost(gateway: Gateway) -> None:
    gateway.inference.gate = asyncio.Event()
    metadata = gateway.key("team-search", Limits(max_concurrent_streams=2))
    first, second = (gateway.stub.Generate(REQUEST, metadata=metadata) for _ in range(2))
    for call in (first, second):
        assert (await call.read()).HasField("delta")  # both streams are open

    error = await refusal(gateway, metadata)
    assert quota_violations(error) == [("apiKeys/team-search", "max_concurrent_streams: 2")]

    first.cancel()
    state = gateway.limiter.state("apiKeys/team-search")
    assert state is not None
    async with asyncio.timeout(10):
        while state.streams != 1:  # the cancelled stream leaves the gateway
            await asyncio.sleep(0.01)
    third = gateway.stub.Generate(REQUEST, metadata=metadata)
    assert (await third.read()).HasField("delta")
    gateway.inference.gate.set()
    for call in (second, third):  # the refusal and the cancel disturbed neither: every token arrives
        rest = []
        while (event := await call.read()) is not grpc.aio.EOF:
            rest.append(event)
        assert [e.WhichOneof("event") for e in rest] == ["delta", "delta", "complete"]
        assert rest[-1].complete.usage.completion_tokens == 3 * TOKENS_PER_DELTA
    assert state.streams == 0


async def test_an_invalid_generate_costs_its_key_nothing(gateway: Gateway) -> None:
    metadata = gateway.key("team-search", Limits(requests_per_minute=1))
    invalid = gateway_pb2.GatewayRequest(question=" ")
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await anext(gateway.stub.Generate(invalid, metadata=metadata).__aiter__())
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert gateway.limiter.state("apiKeys/team-search") is None  # never admitted: no request taken
    assert (await answer(gateway, metadata))[-1].HasField("complete")
