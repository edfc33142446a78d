"""A gateway served in-process over a real inference service (the shipped model) and a real tools service
serving support.agent_tools' tools, each by the real bootstrap on free loopback ports; retrieval is a
health-only stand-in (the agent tests disable retrieval)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.jobs.config import JobConfig
from gateway.policy import ResiliencePolicy
from gateway.server import GatewayService
from gateway.upstreams import UpstreamTargets
from genmesh import mesh
from services.inference.engine import EngineConfig
from services.inference.server import DEFAULT_MODEL, InferenceService
from services.tools.server import ToolsConfig, ToolsService
from support.served import Hosted, served


@dataclass(frozen=True, slots=True)
class AgentsMesh:
    """Where each part answers."""

    gateway: str
    inference: str
    tools: str


@asynccontextmanager
async def agents_mesh(tmp_path: Path, policy: ResiliencePolicy | None = None) -> AsyncIterator[AgentsMesh]:
    """The gateway and its real inference and tools services, until the block ends."""
    async with AsyncExitStack() as stack:
        retrieval = await stack.enter_async_context(served(Hosted(mesh.RETRIEVAL.grpc_service, lambda _: None), False))
        inference = await stack.enter_async_context(
            served(InferenceService(DEFAULT_MODEL, "cpu", EngineConfig(), threads=1), metrics=False)
        )
        config = ToolsConfig(tools_modules=("support.agent_tools:TOOLS",), entry_points=False)
        tools = await stack.enter_async_context(served(ToolsService(config), metrics=False))
        targets = UpstreamTargets(retrieval.address, tools.address, inference.address)
        jobs = JobConfig(str(tmp_path / "jobs.db"), workers=2)
        gateway = await stack.enter_async_context(served(GatewayService(targets, 60.0, jobs, policy), metrics=False))
        yield AgentsMesh(gateway.address, inference.address, tools.address)
