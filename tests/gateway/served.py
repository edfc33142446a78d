"""A whole gateway served in-process by genmesh.server.serve (tests/support/served.py), as `genmesh serve gateway`
serves it (its metrics on a free port when asked), over scripted upstreams on loopback: retrieval and tools on one
port (with health), inference on replicas of their own (health and load reports, tests/gateway/replicas.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from inprocess import ScriptedMesh, ScriptedTool, start_scripted_mesh
from replicas import Replicas, start_replicas
from support.scrape import Samples, scrape_async
from support.served import served

from gateway.auth.keystore import KeyStore
from gateway.jobs.config import JobConfig
from gateway.policy import ResiliencePolicy
from gateway.server import GatewayService
from gateway.upstreams import UpstreamTargets
from genmesh.channels import open_channel
from genmesh.tls import ClientTLS, ServerTLS
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc, jobs_pb2_grpc


@dataclass
class ServedGateway:
    address: str
    metrics_url: str
    upstreams: ScriptedMesh
    replicas: Replicas
    channel: grpc.aio.Channel

    @property
    def gateway(self) -> gateway_pb2_grpc.GatewayServiceStub:
        return gateway_pb2_grpc.GatewayServiceStub(self.channel)

    @property
    def jobs(self) -> jobs_pb2_grpc.JobServiceStub:
        return jobs_pb2_grpc.JobServiceStub(self.channel)

    async def scrape(self) -> Samples:
        """The gateway's metrics, fetched over HTTP as Prometheus fetches them."""
        return await scrape_async(self.metrics_url)

    async def answer(self, request: gateway_pb2.GatewayRequest) -> list[gateway_pb2.GatewayEvent]:
        """Every event of one Generate."""
        return [event async for event in self.gateway.Generate(request, timeout=20)]


@asynccontextmanager
async def served_gateway(
    tmp_path: Path,
    *tools: ScriptedTool,
    policy: ResiliencePolicy | None = None,
    replicas: int = 1,
    job_workers: int = 2,
    job_queue_max: int = 1000,
    metrics: bool = True,
    api_keys: KeyStore | None = None,
    tls: tuple[ServerTLS, ClientTLS] | None = None,
) -> AsyncIterator[ServedGateway]:
    """A gateway serving on free loopback ports until the block ends, with ``tools`` scripted (requiring the keys of
    ``api_keys`` when given; over TLS with ``tls``: the gateway's, and the client's of ``channel``)."""
    async with AsyncExitStack() as stack:
        upstreams = await start_scripted_mesh(*tools, health_service=True)
        stack.push_async_callback(upstreams.stop)
        inference = await start_replicas(replicas)
        stack.push_async_callback(inference.stop)
        targets = UpstreamTargets(upstreams.address, upstreams.address, inference.target)
        jobs = JobConfig(str(tmp_path / "jobs.db"), workers=job_workers, queue_max=job_queue_max)
        service = GatewayService(targets, 20.0, jobs, policy, api_keys)
        where = await stack.enter_async_context(served(service, metrics, tls=tls))
        channel_of = (
            grpc.aio.insecure_channel(where.address) if tls is None else open_channel(where.address, tls=tls[1])
        )
        channel = await stack.enter_async_context(channel_of)
        yield ServedGateway(where.address, where.metrics_url, upstreams, inference, channel)
