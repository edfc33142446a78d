"""Two gateway requests sharing a client's request id (a correlation id, not a key) on the real inference service
and the shipped model: both run at once on one replica, and cancelling one leaves the other to finish."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from inprocess import start_scripted_mesh
from support.served import served

from gateway.balancing.pool import attempt_id
from gateway.circuit import CircuitConfig
from gateway.orchestrator import Orchestrator
from gateway.upstreams import Upstreams, UpstreamTargets
from genmesh.interceptor import MAX_REQUEST_ID_CHARS, valid_request_id
from genmesh.v1 import common_pb2, gateway_pb2
from services.inference.engine import EngineConfig
from services.inference.server import DEFAULT_MODEL, InferenceService


@pytest.fixture
async def upstreams() -> AsyncIterator[Upstreams]:
    service = InferenceService(DEFAULT_MODEL, "cpu", EngineConfig(), threads=1)
    scripted = await start_scripted_mesh()
    async with served(service, metrics=False) as inference:
        opened = Upstreams(UpstreamTargets(scripted.address, scripted.address, inference.address), CircuitConfig())
        await opened.inference.start()
        await opened.inference.wait_until_any_serving(30)
        yield opened
        await opened.close()
    await scripted.stop()


def _ask(upstreams: Upstreams) -> AsyncIterator[gateway_pb2.GatewayEvent]:
    request = gateway_pb2.GatewayRequest(request_id="shared-id", question="Explain the import system in detail.")
    request.retrieval.disabled = True
    request.sampling.max_tokens = 400
    request.sampling.temperature = 0.0
    return Orchestrator(upstreams).answer(request, 60.0)


async def _first_delta(events: AsyncIterator[gateway_pb2.GatewayEvent]) -> None:
    async for event in events:
        if event.HasField("delta"):
            return
    raise AssertionError("the answer ended before its first token")


async def test_two_requests_sharing_an_id_run_at_once_and_cancelling_one_leaves_the_other(
    upstreams: Upstreams,
) -> None:
    streaming = asyncio.Event()

    async def first() -> None:
        async for event in _ask(upstreams):
            if event.HasField("delta"):
                streaming.set()

    running = asyncio.create_task(first())
    await streaming.wait()
    second = _ask(upstreams)
    await _first_delta(second)  # while the first runs: the replica sees two ids
    running.cancel()  # the client went away: its attempt is cancelled and aborted by its own id
    with pytest.raises(asyncio.CancelledError):
        await running
    rest = [event async for event in second]
    assert rest[-1].HasField("complete"), rest[-1]
    assert rest[-1].complete.finish_reason != common_pb2.FINISH_REASON_CANCELLED
    assert sum(e.HasField("delta") for e in rest) > 1, "the second went on generating after the first was cancelled"


def test_an_attempt_id_starts_with_the_client_s_is_unique_and_stays_a_valid_id() -> None:
    for client in ("r-1", "spaced id & {braces}", "~" * MAX_REQUEST_ID_CHARS):
        ids = {attempt_id(client) for _ in range(200)}
        assert len(ids) == 200 and all(valid_request_id(i) for i in ids), client
        assert all(i.startswith(client[: MAX_REQUEST_ID_CHARS - 9] + ".") for i in ids), "found by the client's id"
    assert attempt_id("r-1").startswith("r-1.")
