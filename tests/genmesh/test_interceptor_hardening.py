"""The interceptor every service runs, on a real in-process gRPC server: request bytes that do not parse are
INVALID_ARGUMENT [MALFORMED_REQUEST] for unary requests, coroutine-style streams (health Watch) and request
streams (reflection, at the first message or mid-stream); reflection answers under v1 and v1alpha; a rejected
request id is never logged. (tests/security/ checks the same on every RPC of the real mesh.)"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from genmesh.errors import Reason
from genmesh.interceptor import ServiceInterceptor
from genmesh.logs import LogfmtFormatter
from genmesh.reflection import enable_reflection
from genmesh.status import error_info
from genmesh.v1 import tools_pb2

TRUNCATED = b"\x0a\x05ab"
LIST_TOOLS = "/genmesh.v1.ToolsService/ListTools"


async def _list_tools(
    request: tools_pb2.ListToolsRequest, context: grpc.aio.ServicerContext
) -> tools_pb2.ListToolsResponse:
    return tools_pb2.ListToolsResponse()


@pytest_asyncio.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=[ServiceInterceptor()])
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    tools = grpc.unary_unary_rpc_method_handler(
        _list_tools,
        request_deserializer=tools_pb2.ListToolsRequest.FromString,
        response_serializer=tools_pb2.ListToolsResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("genmesh.v1.ToolsService", {"ListTools": tools}),)
    )
    enable_reflection(server, ["grpc.health.v1.Health", "genmesh.v1.ToolsService"])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as opened:
        yield opened
    await server.stop(0)


def _assert_malformed(error: grpc.aio.AioRpcError, type_name: str) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    info = error_info(error)
    assert info is not None and info.reason == Reason.MALFORMED_REQUEST
    assert f"could not be parsed as {type_name}" in (error.details() or "")


async def test_unary_requests(channel: grpc.aio.Channel) -> None:
    for path, type_name in (
        ("/grpc.health.v1.Health/Check", "grpc.health.v1.HealthCheckRequest"),
        (LIST_TOOLS, "genmesh.v1.ListToolsRequest"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary(path)(TRUNCATED, timeout=10)
        _assert_malformed(caught.value, type_name)


async def test_a_coroutine_style_stream(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in channel.unary_stream("/grpc.health.v1.Health/Watch")(TRUNCATED, timeout=10):
            pass
    _assert_malformed(caught.value, "grpc.health.v1.HealthCheckRequest")


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_request_streams(channel: grpc.aio.Channel, version: str) -> None:
    info = channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo")
    listed = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
    type_name = f"grpc.reflection.{version}.ServerReflectionRequest"
    for frames, answered in (([TRUNCATED], 0), ([listed, TRUNCATED], 1)):
        received: list[bytes] = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for response in info(iter(frames), timeout=10):
                received.append(response)
        _assert_malformed(caught.value, type_name)
        assert len(received) == answered
    (response,) = [r async for r in info(iter([listed]), timeout=10)]
    services = {
        s.name for s in reflection_pb2.ServerReflectionResponse.FromString(response).list_services_response.service
    }
    assert {"grpc.reflection.v1.ServerReflection", "genmesh.v1.ToolsService"} <= services
    status = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert status.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_rejected_request_id_is_not_logged(channel: grpc.aio.Channel) -> None:
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(LogfmtFormatter())
    logger = logging.getLogger("genmesh.rpc")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary(LIST_TOOLS)(b"", metadata=(("x-request-id", "R" * 4000),), timeout=10)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    logged = lines.getvalue()
    assert "status=INVALID_ARGUMENT" in logged and "RRRRRRRR" not in logged, logged[:300]
