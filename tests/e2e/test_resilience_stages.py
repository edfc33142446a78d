"""Partial results: stages past their budget or stopped, require_all_stages; the retrieval circuit, open and closed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from support.chaos import kill9, restart, rpc_lines, wait_for_lines
from support.streams import Collected, collect

from gateway.deadlines import StageBudgets
from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, start_mesh
from genmesh.status import code_value
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc

RETRIEVAL_DELAY_MS = 300
TOOLS_BUDGET_MS = 1500
CIRCUIT_FAILURES = 3
CIRCUIT_COOLDOWN_S = 1.0
RETRIEVAL_ARGS = ["--faults", f"Query:delay={RETRIEVAL_DELAY_MS}ms"]
DEADLINE_EXCEEDED = code_value(grpc.StatusCode.DEADLINE_EXCEEDED)
UNAVAILABLE = code_value(grpc.StatusCode.UNAVAILABLE)


@pytest_asyncio.fixture(scope="module")
async def stage_mesh(log_root: Path) -> AsyncIterator[Mesh]:
    """Retrieval answers after 300 ms; the tools service has a 'sleep_ms' tool; the tool calls have 1.5 s; three
    failures in a row open a circuit for 1 s."""
    running = await start_mesh(
        log_dir=log_root / "stages",
        extra_args={
            "retrieval": RETRIEVAL_ARGS,
            "tools": ["--tools-module", "bench.sleep_plugin:sleep_ms"],
            "inference": ["--threads", "1"],
            "gateway": [
                *("--tools-budget-ms", str(TOOLS_BUDGET_MS)),
                *("--circuit-failures", str(CIRCUIT_FAILURES), "--circuit-cooldown", str(CIRCUIT_COOLDOWN_S)),
            ],
        },
    )
    yield running
    await running.stop(grace_s=2.0)


@pytest_asyncio.fixture
async def gateway(stage_mesh: Mesh) -> AsyncIterator[gateway_pb2_grpc.GatewayServiceStub]:
    async with open_channel(stage_mesh.address("gateway")) as channel:
        yield gateway_pb2_grpc.GatewayServiceStub(channel)


def _ask(request_id: str = "", **retrieval: object) -> gateway_pb2.GatewayRequest:
    request = gateway_pb2.GatewayRequest(request_id=request_id, question="What does the yield statement do?")
    request.sampling.max_tokens = 4
    for key, value in retrieval.items():
        setattr(request.retrieval, key, value)
    return request


def _degraded(got: Collected) -> dict[str, tuple[int, str]]:
    """Degraded events by stage; they are the same in the stream and in the Completion, and precede the tokens."""
    events = {e.degraded.stage: (e.degraded.code, e.degraded.message) for e in got.events if e.HasField("degraded")}
    assert events == {d.stage: (d.code, d.message) for d in got.completion.degraded}
    if "delta" in got.kinds and "degraded" in got.kinds:
        assert max(i for i, k in enumerate(got.kinds) if k == "degraded") < got.kinds.index("delta")
    return events


async def test_a_tool_past_its_budget_is_reported_and_the_answer_proceeds(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
) -> None:
    request = _ask(disabled=True)
    request.tool_calls.add(call_id="quick", name="calculator", arguments_json='{"expression": "6*7"}')
    request.tool_calls.add(call_id="slow", name="sleep_ms", arguments_json='{"ms": 20000}')
    started = time.monotonic()
    got = await collect(gateway.Generate(request, timeout=60))
    elapsed = time.monotonic() - started

    results = {e.tool_result.call_id: e.tool_result for e in got.events if e.HasField("tool_result")}
    assert json.loads(results["quick"].result_json)["value"] == 42
    assert results["slow"].error.code == DEADLINE_EXCEEDED
    assert _degraded(got) == {"tool:slow": (DEADLINE_EXCEEDED, results["slow"].error.message)}
    assert got.token_ids, "the answer proceeds without the slow tool"
    # Cut off at the flag's 1.5 s, not at the default 10 s budget, nor before its budget was up.
    span = next(s for s in got.completion.timings.stages if s.stage == "tool:slow")
    assert TOOLS_BUDGET_MS * 0.95 <= span.end_ms - span.start_ms < StageBudgets().tools_s * 1000 / 2, span
    assert TOOLS_BUDGET_MS / 1000 <= elapsed < StageBudgets().tools_s, f"answered after {elapsed:.2f} s"


async def test_retrieval_past_its_budget_is_cancelled_and_reported(
    stage_mesh: Mesh, gateway: gateway_pb2_grpc.GatewayServiceStub
) -> None:
    got = await collect(gateway.Generate(_ask(timeout_ms=50), timeout=60))
    code, message = _degraded(got)["retrieval"]
    assert code == DEADLINE_EXCEEDED
    assert "50 ms budget" in message
    assert "sources" not in got.kinds
    assert got.token_ids


async def test_a_budget_of_zero_is_a_bad_request(gateway: gateway_pb2_grpc.GatewayServiceStub) -> None:
    request = _ask()
    request.retrieval.timeout_ms = 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(gateway.Generate(request, timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "retrieval.timeout_ms" in (caught.value.details() or "")


async def test_require_all_stages_fails_with_the_stage_status(gateway: gateway_pb2_grpc.GatewayServiceStub) -> None:
    request = _ask(timeout_ms=50)
    request.require_all_stages = True
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(gateway.Generate(request, timeout=60))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "retrieval" in (caught.value.details() or "")


async def test_retrieval_late_in_a_row_opens_its_circuit_and_a_probe_in_time_closes_it(
    stage_mesh: Mesh, gateway: gateway_pb2_grpc.GatewayServiceStub
) -> None:
    healthy = await collect(gateway.Generate(_ask(), timeout=60))  # a success: no failure counts from before
    assert "sources" in healthy.kinds and not healthy.completion.degraded
    for i in range(CIRCUIT_FAILURES):  # each misses its 50 ms budget (retrieval takes 300 ms): a failure
        late = await collect(gateway.Generate(_ask(f"late-{i}", timeout_ms=50), timeout=60))
        assert _degraded(late)["retrieval"][0] == DEADLINE_EXCEEDED

    skipped = await collect(gateway.Generate(_ask("circuit-skipped"), timeout=60))
    code, message = _degraded(skipped)["retrieval"]
    assert code == UNAVAILABLE and "retrieval circuit is open after" in message, message
    assert f"{CIRCUIT_FAILURES} failures in a row" in message
    assert skipped.token_ids, "the answer goes on without retrieval"

    await asyncio.sleep(CIRCUIT_COOLDOWN_S)  # the cool-down (counted from before the skipped request) is over
    probe = await collect(gateway.Generate(_ask("circuit-probe"), timeout=60))
    assert "sources" in probe.kinds and not probe.completion.degraded, "the probe went through and answered in time"
    closed = await collect(gateway.Generate(_ask("circuit-closed"), timeout=60))
    assert "sources" in closed.kinds and not closed.completion.degraded, "the probe's success closed the circuit"
    assert len(await wait_for_lines(stage_mesh, "retrieval", "request_id=circuit-closed")) == 1
    assert rpc_lines(stage_mesh, "retrieval", "request_id=circuit-skipped") == [], "an open circuit calls nobody"
    assert len(rpc_lines(stage_mesh, "retrieval", "request_id=circuit-probe")) == 1


async def test_retrieval_stopped_degrades_then_the_circuit_opens_and_closes(
    stage_mesh: Mesh, gateway: gateway_pb2_grpc.GatewayServiceStub
) -> None:
    healthy = await collect(gateway.Generate(_ask(), timeout=60))
    assert "sources" in healthy.kinds and not healthy.completion.degraded

    await kill9(stage_mesh, "retrieval")
    got = await collect(gateway.Generate(_ask(), timeout=60))
    code, _ = _degraded(got)["retrieval"]
    assert code == UNAVAILABLE
    assert got.token_ids, "answers still stream without retrieval"

    strict = _ask()
    strict.require_all_stages = True
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(gateway.Generate(strict, timeout=60))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "retrieval" in (caught.value.details() or "")

    # The dead upstream's circuit is open (its health stream broke): the stage is skipped at once.
    skipped = await collect(gateway.Generate(_ask(), timeout=60))
    code, message = _degraded(skipped)["retrieval"]
    assert code == UNAVAILABLE and "circuit is open" in message, message

    await restart(stage_mesh, "retrieval", RETRIEVAL_ARGS)
    deadline = time.monotonic() + 15
    while True:
        back = await collect(gateway.Generate(_ask(), timeout=60))
        if "sources" in back.kinds or time.monotonic() > deadline:
            break
    assert "sources" in back.kinds and not back.completion.degraded, "retrieval is used again, no gateway restart"
