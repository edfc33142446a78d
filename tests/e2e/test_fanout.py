"""Retrieval and tool calls run concurrently: the pre-inference stage costs the slowest stage, not the sum."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from support.streams import collect

from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, start_mesh
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc

DELAY_MS = 300


@pytest_asyncio.fixture(scope="module")
async def slow_mesh(log_root: Path) -> AsyncIterator[Mesh]:
    """A mesh whose retrieval queries and tool-call streams (InvokeMany) take an extra 300 ms (injected faults)."""
    running = await start_mesh(
        log_dir=log_root / "fanout",
        extra_args={
            "retrieval": ["--faults", f"Query:delay={DELAY_MS}ms"],
            "tools": ["--faults", f"InvokeMany:delay={DELAY_MS}ms"],
            "inference": ["--threads", "1"],
        },
    )
    yield running
    await running.stop(grace_s=2.0)


async def test_stages_overlap(slow_mesh: Mesh) -> None:
    request = gateway_pb2.GatewayRequest(question="What does the yield statement do?")
    request.tool_calls.add(call_id="a", name="calculator", arguments_json='{"expression": "1+1"}')
    request.tool_calls.add(call_id="b", name="clock", arguments_json="{}")
    request.sampling.max_tokens = 4
    async with open_channel(slow_mesh.address("gateway")) as channel:
        got = await collect(gateway_pb2_grpc.GatewayServiceStub(channel).Generate(request, timeout=60))

    timings = got.completion.timings
    spans = {s.stage: s for s in timings.stages if s.stage != "inference"}
    assert set(spans) == {"retrieval", "tool:a", "tool:b"}
    durations = [s.end_ms - s.start_ms for s in spans.values()]
    assert min(durations) >= DELAY_MS * 0.95, "every stage carries its injected delay"
    # All three stages were in flight at one moment: the latest start precedes the earliest end.
    assert max(s.start_ms for s in spans.values()) < min(s.end_ms for s in spans.values())
    # So the fan-out costs about the slowest stage, far from the sum (900 ms when each takes its 300 ms):
    # at most half of the other stages' time comes on top of the slowest one, even when a loaded machine
    # makes one stage much slower than its injected delay.
    assert timings.pre_inference_ms < max(durations) + (sum(durations) - max(durations)) / 2
    assert timings.pre_inference_ms < max(durations) + DELAY_MS
    assert max(timings.retrieval_ms, timings.tools_ms) <= timings.pre_inference_ms
