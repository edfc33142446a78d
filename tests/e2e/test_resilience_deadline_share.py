"""A client deadline shorter than a stage's budget: the slow stage gets only its share, inference keeps the rest.

Retrieval is slowed (fault injection) far beyond the client's deadline, and the gateway's retrieval budget is
longer than that deadline, so only the share rule (`--stage-deadline-share`, half by default) cuts retrieval off
in time: the answer streams without sources, before the client's deadline, with retrieval degraded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio
from support.streams import collect

from gateway.deadlines import DEADLINE_SHARE
from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, start_mesh
from genmesh.status import code_value
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc

RETRIEVAL_DELAY_S = 120
RETRIEVAL_BUDGET_MS = 30_000
CLIENT_DEADLINE_S = 8.0
"""Shorter than the retrieval budget: without the share, retrieval would take all of it and the request fail."""
DEADLINE_EXCEEDED = code_value(grpc.StatusCode.DEADLINE_EXCEEDED)


@pytest_asyncio.fixture(scope="module")
async def slow_retrieval_mesh(log_root: Path) -> AsyncIterator[Mesh]:
    """Retrieval answers after two minutes; the gateway gives it a 30 s budget and keeps the default share."""
    running = await start_mesh(
        log_dir=log_root / "deadline-share",
        extra_args={
            # It never answers in time, so it needs no demo collection (seeding one takes minutes on two cores).
            "retrieval": ["--faults", f"Query:delay={RETRIEVAL_DELAY_S}s", "--seed-demo", "false"],
            "inference": ["--threads", "1"],
            "gateway": ["--retrieval-budget-ms", str(RETRIEVAL_BUDGET_MS)],
        },
    )
    yield running
    await running.stop(grace_s=2.0)


@pytest_asyncio.fixture
async def gateway(slow_retrieval_mesh: Mesh) -> AsyncIterator[gateway_pb2_grpc.GatewayServiceStub]:
    async with open_channel(slow_retrieval_mesh.address("gateway")) as channel:
        yield gateway_pb2_grpc.GatewayServiceStub(channel)


async def test_a_slow_retrieval_degrades_the_answer_instead_of_spending_the_client_deadline(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
) -> None:
    request = gateway_pb2.GatewayRequest(request_id="share-1", question="What does the yield statement do?")
    request.sampling.max_tokens = 4
    # The client's deadline: an answer that came after it would be DEADLINE_EXCEEDED here, not events.
    got = await collect(gateway.Generate(request, timeout=CLIENT_DEADLINE_S))

    assert got.token_ids, "tokens streamed inside the client's deadline"
    assert "sources" not in got.kinds
    faults = {d.stage: d for d in got.completion.degraded}
    assert set(faults) == {"retrieval"}
    retrieval = faults["retrieval"]
    assert retrieval.code == DEADLINE_EXCEEDED and retrieval.status.code == DEADLINE_EXCEEDED
    assert "share of the request's deadline" in retrieval.message, retrieval.message
    assert got.kinds.index("degraded") < got.kinds.index("delta"), got.kinds
    # Cut off at its share of the deadline: not before it, and well before the deadline itself.
    span = next(s for s in got.completion.timings.stages if s.stage == "retrieval")
    share_ms = CLIENT_DEADLINE_S * DEADLINE_SHARE * 1000
    assert share_ms * 0.9 <= span.end_ms - span.start_ms < CLIENT_DEADLINE_S * 1000 * 0.75, span
    assert got.completion.timings.total_ms < CLIENT_DEADLINE_S * 1000


async def test_a_client_deadline_longer_than_twice_the_budget_leaves_the_budget_in_charge(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
) -> None:
    request = gateway_pb2.GatewayRequest(request_id="share-2", question="What does the yield statement do?")
    request.sampling.max_tokens = 4
    request.retrieval.timeout_ms = 200  # the request's own budget, far inside half its deadline
    got = await collect(gateway.Generate(request, timeout=60))
    retrieval = next(d for d in got.completion.degraded if d.stage == "retrieval")
    assert retrieval.code == DEADLINE_EXCEEDED
    assert retrieval.message == "retrieval missed its 200 ms budget", retrieval.message
    assert got.token_ids
