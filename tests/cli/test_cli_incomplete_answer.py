"""A failed answer ends `genmesh ask` and `genmesh up --demo` with a few readable lines and status 1, not a
traceback: a stream cut short without its completion, and a refused call. A real gRPC server stands in for the
gateway, with a Generate that misbehaves on purpose."""

from __future__ import annotations

import argparse
import io
from collections.abc import AsyncIterator

import grpc
import pytest
from support.genmesh_cli import genmesh

from genmesh.cli.up import ask_demo
from genmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc


class CutShort(gateway_pb2_grpc.GatewayServiceServicer):
    """One delta, then the stream ends without a Completion; or, with ``refuse``, UNAVAILABLE at once."""

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse

    async def Generate(
        self, request: gateway_pb2.GatewayRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GatewayEvent]:
        if self.refuse:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "inference is down")
        yield gateway_pb2.GatewayEvent(delta=common_pb2.TokenDelta(text="Half "))


@pytest.fixture(params=[False, True], ids=["cut-short", "refused"])
async def gateway(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, bool]]:
    server = grpc.aio.server()
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(CutShort(request.param), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", request.param
    await server.stop(None)


async def test_ask_says_what_went_wrong_in_one_line(gateway: tuple[str, bool]) -> None:
    address, refused = gateway
    ran = await genmesh("ask", "--target", address, "What does yield do?")
    assert ran.returncode == 1 and "Traceback" not in ran.stderr
    first = ran.stderr.splitlines()[0]
    wanted = "error: UNAVAILABLE: inference is down" if refused else "error: the gateway closed the stream"
    assert first.startswith(wanted), ran.stderr


async def test_the_demo_question_of_up_fails_in_a_few_lines(gateway: tuple[str, bool]) -> None:
    address, refused = gateway
    err = io.StringIO()
    args = argparse.Namespace(question="q", max_tokens=None, seed=None)
    assert await ask_demo(address, args, None, err) is False
    wanted = "error: UNAVAILABLE: inference is down" if refused else "error: the gateway closed the stream"
    assert err.getvalue().startswith(wanted), err.getvalue()
