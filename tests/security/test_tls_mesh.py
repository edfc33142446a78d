"""The whole mesh with mutual TLS on every hop (`start_mesh(tls=...)`, what `genmesh up --tls` runs): an answer
through the gateway comes with sources (gateway → retrieval), tool results (gateway → tools, and tools →
retrieval for search_docs) and tokens (gateway → inference); every service refuses a client without a
certificate of the mesh's CA."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from support.streams import collect

from genmesh.channels import open_channel
from genmesh.cli.certs import CertDir, create_certs
from genmesh.cli.launcher import Mesh, start_mesh
from genmesh.tls import ClientTLS
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc
from security.tls_processes import health_as


@pytest_asyncio.fixture(scope="module")
async def tls_mesh(tmp_path_factory: pytest.TempPathFactory, log_root: Path) -> AsyncIterator[Mesh]:
    certs = create_certs(tmp_path_factory.mktemp("mesh-certs"))
    running = await start_mesh(log_dir=log_root / "tls", extra_args={"inference": ["--threads", "1"]}, tls=certs)
    yield running
    await running.stop(grace_s=2.0)


async def test_an_answer_crosses_every_hop_over_mutual_tls(tls_mesh: Mesh) -> None:
    request = gateway_pb2.GatewayRequest(request_id="tls-mesh", question="What does the with statement do?")
    request.tool_calls.add(call_id="calc", name="calculator", arguments_json='{"expression": "6*7"}')
    request.tool_calls.add(call_id="docs", name="search_docs", arguments_json='{"query": "with statement"}')
    request.sampling.max_tokens = 8
    async with open_channel(tls_mesh.address("gateway"), tls=tls_mesh.client_tls()) as channel:
        answer = await collect(gateway_pb2_grpc.GatewayServiceStub(channel).Generate(request, timeout=120))
    sources = next(e.sources for e in answer.events if e.HasField("sources"))
    assert sources.passages, answer.kinds
    results = {e.tool_result.call_id: e.tool_result for e in answer.events if e.HasField("tool_result")}
    assert json.loads(results["calc"].result_json) == {"value": "42"} or "42" in results["calc"].result_json
    assert json.loads(results["docs"].result_json)["passages"], results["docs"]
    assert answer.token_ids and answer.completion.usage.completion_tokens == len(answer.token_ids)


@pytest.mark.parametrize("service", ["gateway", "retrieval", "tools", "inference"])
async def test_every_service_requires_a_certificate_of_the_mesh(tls_mesh: Mesh, service: str) -> None:
    certs = tls_mesh.tls
    assert isinstance(certs, CertDir)
    address = tls_mesh.address(service)
    assert await health_as(address, None) == "UNAVAILABLE"
    assert await health_as(address, ClientTLS(certs.ca)) == "UNAVAILABLE"
    assert await health_as(address, tls_mesh.client_tls()) == "SERVING"
