"""Retries: injected UNAVAILABLE on 30 % of retrieval queries and Generate calls is hidden by retries;
idempotent tool calls are retried, non-idempotent ones never."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio
from support.chaos import rpc_lines, wait_for_lines
from support.streams import collect

from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, start_mesh
from genmesh.status import code_value
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc

REQUESTS = 30


@pytest_asyncio.fixture(scope="module")
async def flaky_mesh(log_root: Path) -> AsyncIterator[Mesh]:
    """Retrieval fails 30 % of queries, inference 30 % of Generate calls, the tools service every InvokeMany."""
    running = await start_mesh(
        log_dir=log_root / "retries",
        extra_args={
            "retrieval": ["--faults", "Query:abort=UNAVAILABLE,percent=30"],
            "inference": ["--threads", "1", "--faults", "Generate:abort=UNAVAILABLE,percent=30"],
            "tools": ["--faults", "InvokeMany:abort=UNAVAILABLE"],
            "gateway": ["--generate-attempts", "5"],
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
    await wait_for_lines(mesh, "tools", f"request_id=tool-{name}")
    await asyncio.sleep(0.2)
    return len(rpc_lines(mesh, "tools", f"request_id=tool-{name}"))


async def test_only_idempotent_tools_are_retried(flaky_mesh: Mesh) -> None:
    async with open_channel(flaky_mesh.address("gateway")) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        assert await _tool_attempts(flaky_mesh, gateway, "calculator", '{"expression": "1+1"}') == 3
        assert await _tool_attempts(flaky_mesh, gateway, "clock", "{}") == 1
