"""Retrieval and tool calls run concurrently: the pre-inference stage costs the slowest stage, not the sum."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from support.streams import Collected

from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, start_mesh
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc

DELAY_MS = 500


@pytest_asyncio.fixture(scope="module")
async def slow_mesh(log_root: Path) -> AsyncIterator[Mesh]:
    """A mesh whose retrieval queries and tool-call streams (InvokeMany) take an extra 500 ms (injected faults)."""
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
    got, arrivals = Collected(), []
    async with open_channel(slow_mesh.address("gateway")) as channel:
        sent = time.monotonic()
        async for event in gateway_pb2_grpc.GatewayServiceStub(channel).Generate(request, timeout=60):
            got.kinds.append(event.WhichOneof("event"))
            got.events.append(event)
            arrivals.append(time.monotonic() - sent)

    # As the client sees it, independent of what the gateway reports: the sources and both tool results arrive
    # within less than the two delays in a row (1000 ms), the least a sequential fan-out could take.
    fanned_in_s = max(at for at, kind in zip(arrivals, got.kinds, strict=True) if kind in ("sources", "tool_result"))
    assert sorted(got.kinds[:3]) == ["sources", "tool_result", "tool_result"], got.kinds
    assert DELAY_MS / 1000 <= fanned_in_s < 2 * DELAY_MS / 1000, f"sources and tool results took {fanned_in_s:.3f} s"

    timings = got.completion.timings
    spans = {s.stage: s for s in timings.stages if s.stage != "inference"}
    assert set(spans) == {"retrieval", "tool:a", "tool:b"}
    durations = [s.end_ms - s.start_ms for s in spans.values()]
    assert min(durations) >= DELAY_MS * 0.95, "every stage carries its injected delay"
    # All three stages were in flight at one moment: the latest start precedes the earliest end.
    assert max(s.start_ms for s in spans.values()) < min(s.end_ms for s in spans.values())
    # So the fan-out costs about the slowest stage, far from the sum (1500 ms when each takes its 500 ms):
    # at most half of the other stages' time comes on top of the slowest one, even when a loaded machine
    # makes one stage much slower than its injected delay.
    assert timings.pre_inference_ms < max(durations) + (sum(durations) - max(durations)) / 2
    assert timings.pre_inference_ms < max(durations) + DELAY_MS
    assert max(timings.retrieval_ms, timings.tools_ms) <= timings.pre_inference_ms
