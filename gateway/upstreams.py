"""The gateway's clients of the three upstream services: channels, circuit breakers fed by health checks, caches.

Retrieval and tools replicas are reached through one channel each, round-robin over the target's healthy
addresses (gRPC's round_robin with client-side health checking); their breaker guards the service as a
whole. Inference replicas are balanced by load, each with its own breaker (gateway.balancing).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import grpc

from gateway.balancing.choice import Policy
from gateway.balancing.pool import InferencePool
from gateway.balancing.replica import Replica
from gateway.circuit import CircuitBreaker, CircuitConfig
from gateway.metrics import GatewayMetrics
from gateway.resilience import CircuitOpen, RetryRule, UpstreamGuard
from genmesh import mesh
from genmesh.channels import open_channel
from genmesh.deadlines import timeout
from genmesh.health import wait_until_serving, watch
from genmesh.targets import TargetSpec, channel_target, parse_target
from genmesh.tasks import cancel_and_wait
from genmesh.tls import ClientTLS, server_name
from genmesh.v1 import (
    inference_pb2,
    retrieval_pb2,
    retrieval_pb2_grpc,
    tools_pb2,
    tools_pb2_grpc,
)

log = logging.getLogger("genmesh.gateway")

TOOL_CACHE_TTL_S = 30.0
METADATA_TIMEOUT_S = 2.0
MAX_TOOL_PAGES = 100
"""ListTools pages read at most (a tools service that never ends its listing is cut off there)."""


@dataclass(frozen=True, slots=True)
class UpstreamTargets:
    """Where the upstream services' replicas listen: ``host:port[,host:port...]`` or ``dns:///name:port``
    each (ValueError naming a bad one), and how inference replicas are balanced."""

    retrieval: str
    tools: str
    inference: str
    balancing: Policy = Policy.LEAST_LOAD
    tls: ClientTLS | None = None
    """TLS (and the client certificate) of every upstream channel; plaintext when None."""

    def __post_init__(self) -> None:
        for target in (self.retrieval, self.tools, self.inference):
            spec = parse_target(target)
            if self.tls is not None:
                server_name(spec)  # one name to check each upstream's certificates for

    def spec(self, name: str) -> TargetSpec:
        """The parsed target of upstream ``name``."""
        return parse_target(str(getattr(self, name)))

    def tls_for(self, name: str) -> ClientTLS | None:
        """The TLS of upstream ``name``'s channels: its certificates are checked for its target's host name."""
        return None if self.tls is None else self.tls.for_server(server_name(self.spec(name)))


class Upstreams:
    """Channels, stubs and circuit breakers of retrieval, tools and inference; owns their lifetimes."""

    def __init__(self, targets: UpstreamTargets, circuit: CircuitConfig | None = None) -> None:
        self._targets = targets
        # resolved once: a list's host names are looked up here
        balanced = (mesh.RETRIEVAL, mesh.TOOLS)
        self._channel_targets = {spec.name: channel_target(targets.spec(spec.name)) for spec in balanced}
        self._channels = {
            spec.name: open_channel(self._channel_targets[spec.name], spec.grpc_service, tls=targets.tls_for(spec.name))
            for spec in balanced
        }
        self.retrieval = retrieval_pb2_grpc.RetrievalServiceStub(self._channels["retrieval"])
        self.tools = tools_pb2_grpc.ToolsServiceStub(self._channels["tools"])
        self.inference = InferencePool(
            targets.spec("inference"), targets.balancing, circuit, tls=targets.tls_for(mesh.INFERENCE.name)
        )
        self.breakers = {name: CircuitBreaker(name, circuit) for name in self._channels}
        self.serving = dict.fromkeys(self._channels, False)
        """Whether retrieval and tools report SERVING, as their health watches last said."""
        self.metrics: GatewayMetrics | None = None
        """Where retries are counted (set when the gateway serves metrics)."""
        self._watchers: list[asyncio.Task[None]] = []
        self._tool_schemas: dict[str, dict[str, Any]] = {}
        self._tool_specs: dict[str, tools_pb2.ToolSpec] = {}
        self._idempotent_tools: frozenset[str] = frozenset()
        self.unverifiable_tool_prefixes: tuple[str, ...] = ()
        """Name prefixes of tool providers (MCP servers) that are down: their tools may be unlisted."""
        self._tools_fetched_at = float("-inf")
        self._listing = asyncio.Lock()
        """Held while ListTools is asked: one refresh at a time."""
        self._model_info: inference_pb2.GetModelInfoResponse | None = None
        self._embedder_info: tuple[float, retrieval_pb2.GetEmbedderInfoResponse] | None = None

    async def start(self, wait_s: float) -> None:
        """Wait up to ``wait_s`` until some replica of each upstream serves; then follow their health and load
        (until close). TimeoutError names an upstream that never served."""
        waits = [
            wait_until_serving(target, timeout_s=wait_s, tls=self._targets.tls_for(name))
            for name, target in self._channel_targets.items()
        ]
        await self.inference.start()
        await asyncio.gather(*waits, self.inference.wait_until_any_serving(wait_s))
        self._watch_health()

    def _watch_health(self) -> None:
        for name, channel in self._channels.items():
            breaker = self.breakers[name]

            def on_status(serving: bool, status: str, breaker: CircuitBreaker = breaker) -> None:
                if not serving:
                    log.warning("upstream not serving", extra={"upstream": breaker.name, "status": status})
                self.serving[breaker.name] = serving
                breaker.health(serving, status)

            self._watchers.append(asyncio.create_task(watch(channel, on_status), name=f"health-{name}"))

    def guard(self, name: str, rule: RetryRule | None = None, turn: bool = True) -> UpstreamGuard:
        """Calls to upstream ``name`` under its circuit breaker(s) and ``rule`` (one attempt by default: gRPC's
        retry policy retries idempotent unary calls on the channel). Inference calls go to the replica the
        pool chooses for each attempt; ``turn`` False for a side call, which takes no round-robin turn and whose
        success does not close the circuit."""
        retried = None if self.metrics is None else self.metrics.retry_counter(name)
        if name == mesh.INFERENCE.name:

            def choose(tried: frozenset[str]) -> Replica | None:
                return self.inference.choose(tried, turn)

            return UpstreamGuard(choose, rule, several=self.inference.several, retried=retried, side=not turn)
        return UpstreamGuard(self.breakers[name], rule, retried=retried)

    def is_idempotent(self, tool: str) -> bool:
        """Whether ``tool`` says running it twice is safe (as of the last ListTools)."""
        return tool in self._idempotent_tools

    async def tool_schemas(self, wanted: set[str]) -> dict[str, dict[str, Any]] | None:
        """Argument schemas by tool name, refreshed when stale or when a wanted name is missing.

        None when the tools service cannot be asked; the calls then fail (or degrade) on their own.
        """
        return None if await self.tool_specs(wanted) is None else self._tool_schemas

    async def tool_specs(self, wanted: set[str] | None = None) -> dict[str, tools_pb2.ToolSpec] | None:
        """The tools service's tools by name (schemas, descriptions), as tool_schemas refreshes them; ``wanted``
        None: every tool. The listing is kept TOOL_CACHE_TTL_S and asked again sooner only when a wanted name is
        missing from it; one refresh at a time (concurrent requests wait for it and share it). None when the
        service cannot be asked and nothing usable is kept."""
        if self._fresh(wanted):
            return self._tool_specs
        async with self._listing:
            if self._fresh(wanted):  # another request refreshed it while this one waited
                return self._tool_specs
            known = self._knows(wanted)
            try:
                pages = await self._list_tools()
            except CircuitOpen:
                return self._tool_specs if known else None
            except grpc.aio.AioRpcError as error:
                log.warning("ListTools failed", extra={"code": error.code().name, "detail": error.details()})
                return None
            tools = [tool for page in pages for tool in page.tools]
            self._tool_specs = {t.name: t for t in tools}
            self._tool_schemas = {t.name: json.loads(t.parameters_json_schema or "{}") for t in tools}
            self._idempotent_tools = frozenset(t.name for t in tools if t.idempotent)
            self.unverifiable_tool_prefixes = tuple(p.tool_prefix for p in pages[0].providers if not p.available)
            self._tools_fetched_at = time.monotonic()
        return self._tool_specs

    def _knows(self, wanted: set[str] | None) -> bool:
        """Whether the kept listing holds ``wanted`` (None: any listing was kept, even an empty one)."""
        if wanted is None:
            return self._tools_fetched_at != float("-inf")
        return wanted <= self._tool_specs.keys()

    def _fresh(self, wanted: set[str] | None) -> bool:
        return time.monotonic() - self._tools_fetched_at <= TOOL_CACHE_TTL_S and self._knows(wanted)

    async def _list_tools(self) -> list[tools_pb2.ListToolsResponse]:
        """Every page of ListTools (the providers come with the first), each call under the tools guard."""
        pages: list[tools_pb2.ListToolsResponse] = []
        token = ""
        while len(pages) < MAX_TOOL_PAGES:
            async for attempt in self.guard("tools").attempts(None, "ListTools"):
                with attempt:
                    request = tools_pb2.ListToolsRequest(page_token=token)
                    pages.append(await self.tools.ListTools(request, timeout=METADATA_TIMEOUT_S))
            token = pages[-1].next_page_token
            if not token:
                break
        return pages

    async def context_length(self) -> int:
        """The model's context length, asked once (of any replica: they serve the same model)."""
        return int((await self.model_info()).context_length)

    async def model_info(self) -> inference_pb2.GetModelInfoResponse:
        """The inference replicas' model, asked once (of any replica: they serve the same model)."""
        if self._model_info is None:
            replica = self.inference.choose(frozenset(), turn=False)
            if replica is None:
                raise CircuitOpen(f"no inference replica resolved from {self._targets.inference}")
            request = inference_pb2.GetModelInfoRequest()
            self._model_info = await replica.stub.GetModelInfo(request, timeout=METADATA_TIMEOUT_S)
        return self._model_info

    async def embedder_info(self, deadline: float | None = None) -> retrieval_pb2.GetEmbedderInfoResponse:
        """The retrieval service's embedding model, asked again when older than TOOL_CACHE_TTL_S (a restarted
        retrieval service may load another); the question ends by ``deadline`` (time.monotonic) at the latest."""
        if self._embedder_info is None or time.monotonic() - self._embedder_info[0] > TOOL_CACHE_TTL_S:
            left = timeout(deadline)
            limit = METADATA_TIMEOUT_S if left is None else min(METADATA_TIMEOUT_S, left)
            async for attempt in self.guard(mesh.RETRIEVAL.name).attempts(deadline, "GetEmbedderInfo"):
                with attempt:
                    request = retrieval_pb2.GetEmbedderInfoRequest()
                    info = await self.retrieval.GetEmbedderInfo(request, timeout=limit)
            self._embedder_info = (time.monotonic(), info)
        return self._embedder_info[1]

    async def close(self) -> None:
        """Stop watching health and load; close every channel."""
        await cancel_and_wait(*self._watchers)
        await self.inference.close()
        for channel in self._channels.values():
            await channel.close()
