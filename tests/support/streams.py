"""Helpers for e2e tests: collect a gateway stream, read a failed call's field violations."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from genmesh.status import field_violations
from genmesh.v1 import common_pb2, gateway_pb2


@dataclass
class Collected:
    """Every event of one gateway stream, in arrival order."""

    kinds: list[str] = field(default_factory=list)
    events: list[gateway_pb2.GatewayEvent] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(e.delta.text for e in self.events if e.HasField("delta"))

    @property
    def token_ids(self) -> list[int]:
        return [t for e in self.events if e.HasField("delta") for t in e.delta.token_ids]

    @property
    def completion(self) -> common_pb2.Completion:
        assert self.events and self.events[-1].HasField("complete"), self.kinds
        return self.events[-1].complete


async def collect(call: grpc.aio.UnaryStreamCall) -> Collected:
    out = Collected()
    async for event in call:
        out.kinds.append(event.WhichOneof("event"))
        out.events.append(event)
    return out


def violated_fields(error: grpc.aio.AioRpcError) -> list[str]:
    return [v.field for v in field_violations(error)]
