"""The gateway's clients of the three upstream services, with the small caches it keeps of them."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import grpc

from genmesh.channels import open_channel
from genmesh.v1 import (
    inference_pb2,
    inference_pb2_grpc,
    retrieval_pb2_grpc,
    tools_pb2,
    tools_pb2_grpc,
)

log = logging.getLogger("genmesh.gateway")

TOOL_CACHE_TTL_S = 30.0
METADATA_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class UpstreamTargets:
    """Where the upstream services listen (``host:port``)."""

    retrieval: str
    tools: str
    inference: str


class Upstreams:
    """Channels and stubs to retrieval, tools and inference; owns their lifetimes."""

    def __init__(self, targets: UpstreamTargets) -> None:
        self._channels = [open_channel(t) for t in (targets.retrieval, targets.tools, targets.inference)]
        self.retrieval = retrieval_pb2_grpc.RetrievalServiceStub(self._channels[0])
        self.tools = tools_pb2_grpc.ToolsServiceStub(self._channels[1])
        self.inference = inference_pb2_grpc.InferenceServiceStub(self._channels[2])
        self._tool_schemas: dict[str, dict[str, Any]] = {}
        self.unverifiable_tool_prefixes: tuple[str, ...] = ()
        """Name prefixes of tool providers (MCP servers) that are down: their tools may be unlisted."""
        self._tools_fetched_at = float("-inf")
        self._context_length: int | None = None

    async def tool_schemas(self, wanted: set[str]) -> dict[str, dict[str, Any]] | None:
        """Argument schemas by tool name, refreshed when stale or when a wanted name is missing.

        None when the tools service cannot be asked; the calls then fail (or degrade) on their own.
        """
        stale = time.monotonic() - self._tools_fetched_at > TOOL_CACHE_TTL_S
        if stale or not wanted <= self._tool_schemas.keys():
            try:
                response = await self.tools.ListTools(tools_pb2.ListToolsRequest(), timeout=METADATA_TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                log.warning("ListTools failed", extra={"code": error.code().name, "detail": error.details()})
                return None
            self._tool_schemas = {t.name: json.loads(t.parameters_json_schema) for t in response.tools}
            self.unverifiable_tool_prefixes = tuple(p.tool_prefix for p in response.providers if not p.available)
            self._tools_fetched_at = time.monotonic()
        return self._tool_schemas

    async def context_length(self) -> int:
        """The model's context length, asked once."""
        if self._context_length is None:
            info = await self.inference.GetModelInfo(inference_pb2.GetModelInfoRequest(), timeout=METADATA_TIMEOUT_S)
            self._context_length = int(info.context_length)
        return self._context_length

    async def close(self) -> None:
        """Close every channel."""
        for channel in self._channels:
            await channel.close()
