"""In-process inference replicas for balancing tests: scripted Generate, a health service and a WatchLoad feed
whose reports the test sets, each replica on its own loopback port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from inprocess import Fault, ScriptedInference, fail

from genmesh import mesh
from genmesh.messages import message_text
from genmesh.v1 import inference_pb2, inference_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Reported:
    """What the replica's next load reports say."""

    running: int = 0
    waiting: int = 0
    max_running: int = 8
    accepting: bool = True
    kv_used_tokens: int = 0
    kv_capacity_tokens: int = 0


class ReplicaInference(ScriptedInference):
    """A ScriptedInference that also streams load reports, records Abort calls and, with ``counting``, answers
    CountTokens (a token per 3 characters, rounded up) unless ``count_fault`` fails it."""

    def __init__(self) -> None:
        super().__init__()
        self.reported = Reported()
        self.changed = asyncio.Event()
        self.aborted: list[str] = []
        self.counting = False
        self.count_fault: Fault | None = None
        self.counted: list[inference_pb2.CountTokensRequest] = []

    def report(self, **values: int | bool) -> None:
        """Change what the replica reports, and push a report now."""
        for name, value in values.items():
            setattr(self.reported, name, value)
        self.changed.set()

    async def Abort(  # type: ignore[override]
        self, request: inference_pb2.AbortRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.AbortResponse:
        self.aborted.append(request.request_id)
        return inference_pb2.AbortResponse(found=True)

    async def CountTokens(  # type: ignore[override]
        self, request: inference_pb2.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.CountTokensResponse:
        self.counted.append(request)
        if self.count_fault is not None and self.count_fault.applies(len(self.counted)):
            await fail(context, self.count_fault)
        if not self.counting:
            return await super().CountTokens(request, context)
        prompt = sum(len(message_text(m)) for m in request.messages)
        return inference_pb2.CountTokensResponse(
            prompt_tokens=-(-prompt // 3),
            text_tokens=[-(-len(text) // 3) for text in request.texts],
            context_length_tokens=self.context_length,
        )

    async def WatchLoad(
        self, request: inference_pb2.WatchLoadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.WatchLoadResponse]:
        while True:
            r = self.reported
            yield inference_pb2.WatchLoadResponse(
                running_count=r.running,
                waiting_count=r.waiting,
                kv_used_tokens=r.kv_used_tokens,
                kv_capacity_tokens=r.kv_capacity_tokens,
                accepting=r.accepting,
                named_metrics={"max_running": float(r.max_running)},
            )
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.2)


@dataclass
class Replica:
    """One served replica."""

    servicer: ReplicaInference
    health: health.aio.HealthServicer
    server: grpc.aio.Server
    address: str

    async def set_serving(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        for name in ("", mesh.INFERENCE.grpc_service):
            await self.health.set(name, status)


@dataclass
class Replicas:
    """Several replicas; ``target`` lists them all."""

    replicas: list[Replica] = field(default_factory=list)

    @property
    def target(self) -> str:
        return ",".join(r.address for r in self.replicas)

    def generate_counts(self) -> list[int]:
        return [len(r.servicer.requests) for r in self.replicas]

    async def stop(self) -> None:
        await asyncio.gather(*(r.server.stop(None) for r in self.replicas))


async def start_replica() -> Replica:
    """Serve one replica, SERVING, on a free port of 127.0.0.1."""
    servicer, health_servicer = ReplicaInference(), health.aio.HealthServicer()
    server = grpc.aio.server()
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    replica = Replica(servicer, health_servicer, server, f"127.0.0.1:{port}")
    await replica.set_serving(True)
    return replica


async def start_replicas(count: int) -> Replicas:
    return Replicas([await start_replica() for _ in range(count)])
