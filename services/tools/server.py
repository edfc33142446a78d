"""The tools service's gRPC server: a thin servicer over the tool registry, and its entry point."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import grpc

from genmesh import mesh
from genmesh.config import add_server_flags, parse
from genmesh.errors import InvalidArgument
from genmesh.server import run
from genmesh.v1 import common_pb2, tools_pb2, tools_pb2_grpc
from services.tools.registry import DEFAULT_MAX_WORKERS, ToolRegistry, default_registry


class ToolsServicer(tools_pb2_grpc.ToolsServiceServicer):
    """Protobuf in, protobuf out; the registry validates and runs the tools."""

    def __init__(self, registry: ToolRegistry) -> None:
        self._registry = registry

    async def ListTools(
        self, request: tools_pb2.ListToolsRequest, context: grpc.aio.ServicerContext
    ) -> tools_pb2.ListToolsResponse:
        return tools_pb2.ListToolsResponse(
            tools=[
                tools_pb2.ToolSpec(
                    name=t.name,
                    description=t.description,
                    parameters_json_schema=json.dumps(t.parameters),
                    timeout_ms=int(t.timeout_s * 1000),
                    idempotent=t.idempotent,
                )
                for t in self._registry.list()
            ]
        )

    async def Invoke(
        self, request: tools_pb2.InvokeRequest, context: grpc.aio.ServicerContext
    ) -> tools_pb2.InvokeResponse:
        call = request.call
        if not call.name:
            raise InvalidArgument.field("call.name", "must not be empty")
        budgets = [context.time_remaining()]
        if call.HasField("timeout_ms"):
            if call.timeout_ms == 0:
                raise InvalidArgument.field("call.timeout_ms", "must be positive")
            budgets.append(call.timeout_ms / 1000.0)
        timeout_s = min((b for b in budgets if b is not None), default=None)
        result = await self._registry.invoke(
            call.name, call.arguments_json or "{}", timeout_s, field_prefix="call.arguments_json"
        )
        return tools_pb2.InvokeResponse(
            result=common_pb2.ToolResult(
                call_id=call.call_id, name=call.name, result_json=result.result_json, duration_ms=result.duration_ms
            )
        )


class ToolsService:
    """The tools service as the server bootstrap runs it."""

    service_name = mesh.TOOLS.grpc_service

    def __init__(self, max_workers: int) -> None:
        self._registry = default_registry(max_workers)

    def register(self, server: grpc.aio.Server) -> None:
        tools_pb2_grpc.add_ToolsServiceServicer_to_server(ToolsServicer(self._registry), server)

    async def start(self) -> None:
        """The built-in tools need no warm-up."""

    async def stop(self) -> None:
        self._registry.close(wait=False)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the tools service until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="genmesh serve tools", description=__doc__)
    flags = add_server_flags(parser, "tools", mesh.TOOLS.default_port)
    flags.add("--max-workers", type=int, default=DEFAULT_MAX_WORKERS, help="threads for blocking tools")
    args = parse(parser, argv)
    run("tools", args, lambda: ToolsService(args.max_workers))


if __name__ == "__main__":
    main()
