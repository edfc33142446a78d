"""Admission control and backpressure: a flood of 4x the stream cap gets RESOURCE_EXHAUSTED with RetryInfo at once
for the excess while the admitted streams complete; 200 slow-reading streams keep the gateway's memory bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio
from support.chaos import ports_of, rss_mb
from support.streams import collect

from genmesh import mesh as topology
from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, ServiceProcess, free_port, start_mesh, start_service, wait_ready
from genmesh.status import retry_delay_s
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc

CAP = 8
SLOW_STREAMS = 200


@pytest_asyncio.fixture(scope="module")
async def flood_mesh(log_root: Path) -> AsyncIterator[Mesh]:
    """A gateway capped at 8 streams, in front of an inference service that may queue 256 requests."""
    running = await start_mesh(
        log_dir=log_root / "flood",
        extra_args={"inference": ["--threads", "1", "--max-waiting", "256"], "gateway": ["--max-streams", str(CAP)]},
    )
    yield running
    await running.stop(grace_s=2.0)


@pytest_asyncio.fixture(scope="module")
async def wide_gateway(flood_mesh: Mesh, log_root: Path) -> AsyncIterator[ServiceProcess]:
    """A second gateway on the same upstreams that admits all 200 slow readers."""
    host = "127.0.0.1"
    ports = {**ports_of(flood_mesh), "gateway": free_port()}
    args = topology.serve_args(topology.GATEWAY, host, ports, {s.name: host for s in topology.SERVICES})
    service = await start_service(
        topology.GATEWAY, [*args, "--max-streams", "256"], f"{host}:{ports['gateway']}", log_root / "flood-wide"
    )
    try:
        await wait_ready(service, 120)
        yield service
    finally:
        service.process.terminate()
        await service.process.wait()


def _request(max_tokens: int) -> gateway_pb2.GatewayRequest:
    request = gateway_pb2.GatewayRequest(question="Explain how the garbage collector finds reference cycles.")
    request.retrieval.disabled = True
    request.sampling.max_tokens = max_tokens
    request.sampling.temperature = 0.0
    return request


async def test_flood_past_the_cap(flood_mesh: Mesh) -> None:
    async with open_channel(flood_mesh.address("gateway")) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)

        async def one() -> tuple[str, float, float | None]:
            started = time.monotonic()
            try:
                got = await collect(gateway.Generate(_request(64), timeout=120))
            except grpc.aio.AioRpcError as error:
                return error.code().name, time.monotonic() - started, retry_delay_s(error)
            return ("OK" if got.completion.usage.completion_tokens else "EMPTY"), time.monotonic() - started, None

        outcomes = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(4 * CAP))), timeout=300)
    refused = [o for o in outcomes if o[0] == "RESOURCE_EXHAUSTED"]
    completed = [o for o in outcomes if o[0] == "OK"]
    assert len(refused) + len(completed) == 4 * CAP, [o[0] for o in outcomes]
    assert len(completed) >= CAP, "every admitted stream completed"
    assert len(refused) >= 2 * CAP, f"the excess was refused: {len(refused)} of {3 * CAP}"
    assert all(delay is not None and delay > 0 for _, _, delay in refused), "each refusal carries RetryInfo"
    slowest_refusal = max(elapsed for _, elapsed, _ in refused)
    fastest_completion = min(elapsed for _, elapsed, _ in completed)
    assert slowest_refusal < fastest_completion, "refusals come at once, not after waiting in a queue"


async def test_slow_readers_keep_gateway_memory_bounded(wide_gateway: ServiceProcess) -> None:
    """Per-stream memory with many readers. The relay's merging does not show here: gRPC buffers some MB per
    stream before a reader's slowness reaches the relay, more than this model ever generates; the relay itself is
    tested with a stalled reader in tests/gateway/test_relay_stream.py."""
    async with open_channel(wide_gateway.address) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        await collect(gateway.Generate(_request(8), timeout=120))  # warm up
        baseline = rss_mb(wide_gateway.process.pid)
        peak = baseline
        tokens = 0

        async def slow_reader() -> int:
            count = 0
            async for event in gateway.Generate(_request(32), timeout=300):
                count += len(event.delta.token_ids)
                if event.HasField("complete"):
                    assert event.complete.usage.completion_tokens == count, "no token lost or repeated"
                    return count
                await asyncio.sleep(0.05)
            raise AssertionError("a stream ended without its Completion")

        readers = asyncio.gather(*(slow_reader() for _ in range(SLOW_STREAMS)))
        while not readers.done():
            peak = max(peak, rss_mb(wide_gateway.process.pid))
            await asyncio.sleep(0.2)
        tokens = sum(await readers)
    print(f"gateway RSS {baseline:.1f} MB idle, {peak:.1f} MB peak with {SLOW_STREAMS} slow readers ({tokens} tokens)")
    assert tokens >= SLOW_STREAMS, "every slow reader got its answer"
    assert peak - baseline < 50, f"gateway memory grew {peak - baseline:.1f} MB for {SLOW_STREAMS} streams"
