"""Upstreams failing every call, live: bounded attempts per request, then an open circuit, one probe at a time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio
from support.chaos import attempts, kill9, restart
from support.streams import Collected, collect

from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, start_mesh
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc

GENERATE_ATTEMPTS = 2
QUERY_ATTEMPTS = 5
"""gRPC's own retry policy of Query (genmesh.channels)."""
CIRCUIT_FAILURES = 3
CIRCUIT_COOLDOWN_S = 1.5
GENERATE_DELAY_S = 1.0
"""How long each Generate takes to fail: the half-open probe is still in flight when the other calls arrive."""
INFERENCE_ARGS = ["--threads", "1"]


@pytest_asyncio.fixture(scope="module")
async def down_mesh(log_root: Path) -> AsyncIterator[Mesh]:
    """Every Query fails with UNAVAILABLE at once, every Generate after 1 s (injected); the gateway's flags differ
    from the defaults (3 attempts, 5 failures, 2 s), so that a flag that is ignored shows."""
    running = await start_mesh(
        log_dir=log_root / "circuit",
        extra_args={
            "retrieval": ["--faults", "Query:abort=UNAVAILABLE", "--seed-demo", "false"],
            "inference": [*INFERENCE_ARGS, "--faults", f"Generate:delay={GENERATE_DELAY_S}s,abort=UNAVAILABLE"],
            "gateway": [
                *("--generate-attempts", str(GENERATE_ATTEMPTS), "--retrieval-budget-ms", "20000"),
                *("--circuit-failures", str(CIRCUIT_FAILURES), "--circuit-cooldown", str(CIRCUIT_COOLDOWN_S)),
            ],
        },
    )
    yield running
    await running.stop(grace_s=2.0)


@pytest_asyncio.fixture(scope="module")
async def gateway(down_mesh: Mesh) -> AsyncIterator[gateway_pb2_grpc.GatewayServiceStub]:
    async with open_channel(down_mesh.address("gateway")) as channel:
        yield gateway_pb2_grpc.GatewayServiceStub(channel)


def _request(request_id: str) -> gateway_pb2.GatewayRequest:
    request = gateway_pb2.GatewayRequest(request_id=request_id, question="What does the with statement do?")
    request.sampling.max_tokens = 4
    return request


async def _answer(gateway: gateway_pb2_grpc.GatewayServiceStub, request_id: str) -> Collected | str:
    """The answer, or the details of the UNAVAILABLE it failed with."""
    try:
        return await collect(gateway.Generate(_request(request_id), timeout=60))
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        return error.details() or ""


async def test_bounded_attempts_then_the_circuit_opens_then_one_probe_at_a_time(
    down_mesh: Mesh, gateway: gateway_pb2_grpc.GatewayServiceStub
) -> None:
    for i in range(CIRCUIT_FAILURES):
        failed = await _answer(gateway, f"down-{i}")
        assert isinstance(failed, str) and "injected fault" in failed, failed
        assert attempts(down_mesh, "inference", "Generate", f"down-{i}") == GENERATE_ATTEMPTS
        assert attempts(down_mesh, "retrieval", "Query", f"down-{i}") == QUERY_ATTEMPTS

    refused = await _answer(gateway, "down-refused")
    assert isinstance(refused, str) and "inference circuit is open after" in refused, refused
    assert f"{CIRCUIT_FAILURES} failures in a row" in refused
    assert attempts(down_mesh, "inference", "Generate", "down-refused") == 0, "an open circuit fails fast"

    await asyncio.sleep(CIRCUIT_COOLDOWN_S)  # the cool-down, counted from before the refused request, is over
    probes = await asyncio.gather(*(_answer(gateway, f"probe-{i}") for i in range(3)))
    tried = {i: attempts(down_mesh, "inference", "Generate", f"probe-{i}") for i in range(3)}
    assert sorted(tried.values()) == [0, 0, 1], f"one probe at a time, tried once: {tried}"
    for i, outcome in enumerate(probes):
        assert isinstance(outcome, str)
        assert ("injected fault" if tried[i] else "circuit is open") in outcome, outcome
    again = await _answer(gateway, "after-probe")
    assert isinstance(again, str) and "circuit is open" in again, "the failed probe opened it again"
    assert attempts(down_mesh, "inference", "Generate", "after-probe") == 0


async def test_a_restarted_inference_service_is_used_again(
    down_mesh: Mesh, gateway: gateway_pb2_grpc.GatewayServiceStub
) -> None:
    await kill9(down_mesh, "inference")
    await restart(down_mesh, "inference", INFERENCE_ARGS)  # without the fault
    outcome: Collected | str = ""
    async with asyncio.timeout(30):  # the circuit closes once the gateway sees it SERVING again
        while not isinstance(outcome := await _answer(gateway, "healed"), Collected):
            assert "injected fault" not in outcome, outcome
            await asyncio.sleep(0.2)
    assert outcome.token_ids and outcome.completion.usage.completion_tokens == len(outcome.token_ids)
    assert [d.stage for d in outcome.completion.degraded] == ["retrieval"], "retrieval still fails; the answer goes on"
