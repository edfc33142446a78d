"""What every route of the HTTP front shares: the gateway channel, its stubs, the served model's name."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from genmesh.v1 import gateway_pb2_grpc

if TYPE_CHECKING:
    from gateway.http.metrics import HttpMetrics


@dataclass(frozen=True, slots=True)
class ToolsTarget:
    """The tools service at ``address`` (HOST:PORT), reached with these TLS files (the upstream TLS flags'; none:
    plaintext)."""

    address: str
    ca: str = ""
    cert: str = ""
    key: str = ""


@dataclass(slots=True)
class HttpContext:
    """The gateway ``channel`` (a gRPC aio channel), the ``model`` name answered as OpenAI's ``model`` (a request
    naming another model gets 404 model_not_found; empty: the id of the gateway's language model, asked once by
    ``openai_models.served_model``), ``tools``: the tools service GET /v1/genmesh/tools lists (None: the route
    is not served), and ``allowed_origins``: the browser origins (``https://app.example``) whose pages
    may open the WebSocket besides the front's own. ``answers``: the WebSocket answers running (shutdown lets them
    finish), ``draining``: set at shutdown, when new WebSocket answers are refused; ``metrics``: where requests are
    recorded (None: off)."""

    channel: grpc.aio.Channel
    model: str = ""
    tools: ToolsTarget | None = None
    allowed_origins: frozenset[str] = frozenset()
    answers: set[asyncio.Task[None]] = field(default_factory=set)
    draining: bool = False
    metrics: HttpMetrics | None = None

    def disconnected(self, route: str) -> None:
        """Count an answer of ``route`` cancelled because its client left (when metrics are on)."""
        if self.metrics is not None:
            self.metrics.disconnected(route)

    @property
    def gateway(self) -> gateway_pb2_grpc.GatewayServiceStub:
        return gateway_pb2_grpc.GatewayServiceStub(self.channel)
