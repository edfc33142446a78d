"""Deadlines end a slow request on time and reach inference; a client that cancels stops its tool calls too."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from support.chaos import wait_for_lines, wait_for_log
from support.napping import NAPPING, SPEC, tools_env
from support.streams import collect

from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, start_mesh
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc

INFERENCE_DELAY_S = 3.0


@pytest_asyncio.fixture(scope="module")
async def slow_mesh(log_root: Path) -> AsyncIterator[Mesh]:
    """Inference takes 3 s before it starts a stream; the tools service has a 'nap' tool that logs its start."""
    running = await start_mesh(
        log_dir=log_root / "deadlines",
        extra_args={
            "inference": ["--threads", "1", "--faults", f"Generate:delay={INFERENCE_DELAY_S}s"],
            "tools": ["--tools-module", SPEC],
        },
        env=tools_env(),
    )
    yield running
    await running.stop(grace_s=2.0)


async def test_deadline_shorter_than_the_inference_delay(slow_mesh: Mesh) -> None:
    request = gateway_pb2.GatewayRequest(request_id="too-slow-1", question="What is a generator?")
    request.retrieval.disabled = True
    request.sampling.max_tokens = 8
    timeout_s = 1.0
    async with open_channel(slow_mesh.address("gateway")) as channel:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(gateway_pb2_grpc.GatewayServiceStub(channel).Generate(request, timeout=timeout_s))
        elapsed = time.monotonic() - started
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < INFERENCE_DELAY_S, f"ended after {elapsed:.2f} s, not at its {timeout_s} s deadline"

    # The gateway gave inference the client's deadline less its margin; inference saw the call end early.
    lines = await wait_for_lines(slow_mesh, "inference", "request_id=too-slow-1")
    assert lines, "inference logged the Generate call"
    assert any(s in lines[-1] for s in ("status=CANCELLED", "status=DEADLINE_EXCEEDED")), lines[-1]
    duration_ms = float(lines[-1].split("duration_ms=")[1].split()[0])
    assert duration_ms < INFERENCE_DELAY_S * 1000, "inference stopped waiting when the deadline passed"


async def test_cancel_stops_the_tool_calls(slow_mesh: Mesh) -> None:
    request = gateway_pb2.GatewayRequest(request_id="cancel-tools-1", question="What is a generator?")
    request.retrieval.disabled = True
    request.tool_calls.add(call_id="nap", name="nap", arguments_json='{"ms": 30000}')
    async with open_channel(slow_mesh.address("gateway")) as channel:
        call = gateway_pb2_grpc.GatewayServiceStub(channel).Generate(request, timeout=60)
        await wait_for_log(slow_mesh, "tools", NAPPING, "request_id=cancel-tools-1")  # the 30 s call is running
        call.cancel()
        lines = await wait_for_lines(slow_mesh, "tools", "request_id=cancel-tools-1", timeout_s=10)
    assert lines and "status=CANCELLED" in lines[-1], lines
    duration_ms = float(lines[-1].split("duration_ms=")[1].split()[0])
    assert duration_ms < 10_000, "the tool call stopped with the client, long before its 30 s"
