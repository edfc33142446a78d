"""The gateway's gRPC server: a thin servicer over the orchestrator, and its entry point."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

import grpc

from gateway.orchestrator import Orchestrator
from gateway.upstreams import Upstreams, UpstreamTargets
from genmesh import mesh
from genmesh.config import add_server_flags, parse
from genmesh.health import wait_until_serving
from genmesh.server import run
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc

log = logging.getLogger("genmesh.gateway")


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    """Protobuf in, protobuf out; the orchestrator does the work."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self._orchestrator = orchestrator

    async def Generate(
        self, request: gateway_pb2.GatewayRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GatewayEvent]:
        async for event in self._orchestrator.answer(request, context.time_remaining()):
            yield event


class GatewayService:
    """The gateway as the server bootstrap runs it: ready once its upstreams are."""

    service_name = mesh.GATEWAY.grpc_service

    def __init__(self, targets: UpstreamTargets, upstream_wait_s: float) -> None:
        self._targets = targets
        self._upstream_wait_s = upstream_wait_s
        self._upstreams: Upstreams | None = None

    def register(self, server: grpc.aio.Server) -> None:
        # Channels belong to the running event loop, so they are opened here, not in __init__.
        self._upstreams = Upstreams(self._targets)
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(GatewayServicer(Orchestrator(self._upstreams)), server)

    async def start(self) -> None:
        targets = (self._targets.retrieval, self._targets.tools, self._targets.inference)
        await asyncio.gather(*(wait_until_serving(t, timeout_s=self._upstream_wait_s) for t in targets))

    async def stop(self) -> None:
        if self._upstreams is not None:
            await self._upstreams.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the gateway until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="genmesh serve gateway", description=__doc__)
    flags = add_server_flags(parser, "gateway", mesh.GATEWAY.default_port)
    for upstream in (mesh.RETRIEVAL, mesh.TOOLS, mesh.INFERENCE):
        flags.add(
            f"--{upstream.name}-target",
            default=f"127.0.0.1:{upstream.default_port}",
            help=f"host:port of the {upstream.name} service",
        )
    flags.add("--upstream-wait", type=float, default=300.0, help="seconds to wait for upstreams at start-up")
    args = parse(parser, argv)
    targets = UpstreamTargets(args.retrieval_target, args.tools_target, args.inference_target)
    run("gateway", args, lambda: GatewayService(targets, args.upstream_wait))


if __name__ == "__main__":
    main()
