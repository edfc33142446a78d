"""Retries hide injected UNAVAILABLE within their bounds per request; only idempotent tool calls are retried."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio
from support.chaos import attempts, rpc_lines
from support.streams import collect

from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, start_mesh
from genmesh.status import code_value
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc

REQUESTS = 30
GENERATE_ATTEMPTS = 5
QUERY_ATTEMPTS = 5
"""gRPC's own retry policy of Query (genmesh.channels), which is also gRPC's ceiling."""


@pytest_asyncio.fixture(scope="module")
async def flaky_mesh(log_root: Path) -> AsyncIterator[Mesh]:
    """Retrieval fails 30 % of queries, inference 30 % of Generate calls, the tools service every InvokeMany."""
    running = await start_mesh(
        log_dir=log_root / "retries",
        extra_args={
            "retrieval": ["--faults", "Query:abort=UNAVAILABLE,percent=30"],
            "inference": ["--threads", "1", "--faults", "Generate:abort=UNAVAILABLE,percent=30"],
            "tools": ["--faults", "InvokeMany:abort=UNAVAILABLE"],
            "gateway": ["--generate-attempts", str(GENERATE_ATTEMPTS)],
        },
    )
    yield running
    await running.stop(grace_s=2.0)


async def test_retries_hide_injected_unavailable(flaky_mesh: Mesh) -> None:
    async with open_channel(flaky_mesh.address("gateway")) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)

        async def ask(i: int) -> bool:
            request = gateway_pb2.GatewayRequest(request_id=f"flaky-{i}", question="What does the with statement do?")
            request.sampling.max_tokens = 4
            try:
                got = await collect(gateway.Generate(request, timeout=60))
            except grpc.aio.AioRpcError as error:
                # Every attempt met an injected fault (0.3 ** 5): bounded retries end like this, nothing else may.
                assert error.code() == grpc.StatusCode.UNAVAILABLE and "injected fault" in (error.details() or "")
                return False
            return bool(got.token_ids) and not got.completion.degraded and "sources" in got.kinds

        clean = [await ask(i) for i in range(REQUESTS)]
    queries = rpc_lines(flaky_mesh, "retrieval", "method=/genmesh.v1.RetrievalService/Query")
    generates = rpc_lines(flaky_mesh, "inference", "method=/genmesh.v1.InferenceService/Generate")
    print(
        f"clean answers {sum(clean)}/{REQUESTS}; Query attempts {len(queries)} "
        f"({sum('status=UNAVAILABLE' in q for q in queries)} injected failures); Generate attempts {len(generates)} "
        f"({sum('status=UNAVAILABLE' in g for g in generates)} injected failures)"
    )
    assert sum("status=UNAVAILABLE" in q for q in queries) > 0, "faults were injected into retrieval"
    assert sum("status=UNAVAILABLE" in g for g in generates) > 0, "faults were injected into inference"
    assert len(queries) > REQUESTS and len(generates) > REQUESTS, "failed attempts were retried"
    assert sum(clean) >= REQUESTS * 0.9, f"only {sum(clean)}/{REQUESTS} answers were clean"
    per_request = [
        (
            attempts(flaky_mesh, "retrieval", "Query", f"flaky-{i}"),
            attempts(flaky_mesh, "inference", "Generate", f"flaky-{i}"),
        )
        for i in range(REQUESTS)
    ]
    assert all(1 <= q <= QUERY_ATTEMPTS and 1 <= g <= GENERATE_ATTEMPTS for q, g in per_request), per_request
    gateway_log = flaky_mesh.services["gateway"].log_path
    assert gateway_log is not None
    assert "retrying Generate" in gateway_log.read_text(), "the gateway retried Generate before its first token"


async def _tool_attempts(mesh: Mesh, gateway: gateway_pb2_grpc.GatewayServiceStub, name: str, args: str) -> int:
    request = gateway_pb2.GatewayRequest(request_id=f"tool-{name}", question="What time is it?")
    request.retrieval.disabled = True
    request.sampling.max_tokens = 2
    request.tool_calls.add(call_id="t", name=name, arguments_json=args)
    got = await collect(gateway.Generate(request, timeout=60))
    assert [(d.stage, d.code) for d in got.completion.degraded] == [("tool:t", code_value(grpc.StatusCode.UNAVAILABLE))]
    # The gateway saw every attempt fail before it answered, and each attempt's line was written before that.
    return attempts(mesh, "tools", "InvokeMany", f"tool-{name}")


async def test_only_idempotent_tools_are_retried(flaky_mesh: Mesh) -> None:
    async with open_channel(flaky_mesh.address("gateway")) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        assert await _tool_attempts(flaky_mesh, gateway, "calculator", '{"expression": "1+1"}') == 3
        assert await _tool_attempts(flaky_mesh, gateway, "clock", "{}") == 1
