"""Per-key limits end to end: a gateway process with ``--api-keys`` (keys made by ``genmesh keys create``) in front
of the session mesh's real model; refusals carry RetryInfo, QuotaFailure and ErrorInfo and write an audit line."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from support.api_keys import bearer, create_key, error_info, quota_violations
from support.jobs_gateway import start_jobs_gateway, stop

from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, ServiceProcess
from genmesh.status import retry_delay_s
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc


@pytest_asyncio.fixture(scope="module")
async def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("limited-keys")


@pytest_asyncio.fixture(scope="module")
async def limited(mesh: Mesh, keys_dir: Path, log_root: Path) -> AsyncIterator[ServiceProcess]:
    """A gateway that requires the keys of ``keys_dir/keys.json``."""
    store = keys_dir / "keys.json"
    create_key(store, "bootstrap")  # the store exists before the gateway starts; later keys are hot-reloaded
    gateway = await start_jobs_gateway(
        mesh, keys_dir / "jobs.db", log_root / "limited-gateway", "--api-keys", str(store)
    )
    yield gateway
    await stop(gateway)


@pytest_asyncio.fixture
async def stub(limited: ServiceProcess) -> AsyncIterator[gateway_pb2_grpc.GatewayServiceStub]:
    async with open_channel(limited.address) as channel:
        yield gateway_pb2_grpc.GatewayServiceStub(channel)


def ask(max_tokens: int) -> gateway_pb2.GatewayRequest:
    request = gateway_pb2.GatewayRequest(question="Explain the import system in detail.")
    request.sampling.max_tokens = max_tokens
    request.sampling.temperature = 0.0
    request.retrieval.disabled = True
    return request


async def answer(
    stub: gateway_pb2_grpc.GatewayServiceStub, secret: str, max_tokens: int = 4
) -> list[gateway_pb2.GatewayEvent]:
    return [event async for event in stub.Generate(ask(max_tokens), metadata=bearer(secret), timeout=120)]


async def first_answer(
    stub: gateway_pb2_grpc.GatewayServiceStub, secret: str, max_tokens: int = 4
) -> list[gateway_pb2.GatewayEvent]:
    """The first answer for a key just created: UNAUTHENTICATED until the gateway has reloaded the store."""
    async with asyncio.timeout(60):
        while True:
            try:
                return await answer(stub, secret, max_tokens)
            except grpc.aio.AioRpcError as unknown:
                assert unknown.code() == grpc.StatusCode.UNAUTHENTICATED, unknown.details()
            await asyncio.sleep(0.1)


async def refused(stub: gateway_pb2_grpc.GatewayServiceStub, secret: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await answer(stub, secret)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.value.details()
    return error.value


async def audit_line(gateway: ServiceProcess, *words: str) -> str:
    """The gateway's audit line holding every one of ``words`` (written before the refusal was sent)."""
    assert gateway.log_path is not None
    async with asyncio.timeout(30):  # the line is written before the status; the file may lag a flush
        while True:
            for line in gateway.log_path.read_text(errors="replace").splitlines():
                if "audit" in line and all(word in line for word in words):
                    return line
            await asyncio.sleep(0.05)


async def test_past_its_requests_per_minute_a_key_is_told_which_limit_and_when(
    stub: gateway_pb2_grpc.GatewayServiceStub, limited: ServiceProcess, keys_dir: Path
) -> None:
    secret = create_key(keys_dir / "keys.json", "rpm-two", "--rpm", "2")
    events = await first_answer(stub, secret)
    assert events[-1].HasField("complete")
    assert (await answer(stub, secret))[-1].HasField("complete")

    error = await refused(stub, secret)
    ((subject, description),) = quota_violations(error)
    assert subject.startswith("apiKeys/") and description == "requests_per_minute: 2"
    assert error_info(error).reason == "RATE_LIMITED"
    delay = retry_delay_s(error)
    assert delay is not None and 0 < delay <= 30.0
    assert "requests_per_minute limit of 2" in str(error.details()) and "rpm-two" in str(error.details())

    line = await audit_line(limited, "limit_hit", "rpm-two", "requests_per_minute")
    assert secret not in line


async def test_tokens_are_charged_as_they_stream_so_a_long_answer_makes_the_next_request_wait(
    stub: gateway_pb2_grpc.GatewayServiceStub, keys_dir: Path
) -> None:
    secret = create_key(keys_dir / "keys.json", "tpm-eight", "--tpm", "8")
    events = await first_answer(stub, secret, max_tokens=32)
    streamed = sum(len(event.delta.token_ids) for event in events if event.HasField("delta"))
    assert streamed == events[-1].complete.usage.completion_tokens > 8  # the answer was not cut at the limit

    error = await refused(stub, secret)
    ((_, description),) = quota_violations(error)
    assert description == "tokens_per_minute: 8"
    delay = retry_delay_s(error)
    assert delay is not None and delay > 7.5 * (streamed - 8)  # the debt is paid back at 8 tokens a minute
