"""A service served in-process by the real bootstrap (genmesh.server.serve) on free loopback ports, with or
without its /metrics page, until the block ends; and ``Hosted``, servicers as such a service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc

from genmesh.cli.launcher import free_ports
from genmesh.health import wait_until_serving
from genmesh.server import ServerConfig, Service, serve
from genmesh.tls import ClientTLS, ServerTLS


class Hosted:
    """Servicers as a genmesh.server Service with nothing to start or stop, so that the real bootstrap serves them
    (health, interceptors, metrics): ``add`` puts them on the server, as an ``add_*Servicer_to_server`` does."""

    also_serves: tuple[str, ...] = ()
    interceptors: tuple[grpc.aio.ServerInterceptor, ...] = ()

    def __init__(self, service_name: str, add: Callable[[grpc.aio.Server], None]) -> None:
        self.service_name = service_name
        self._add = add

    def register(self, server: grpc.aio.Server) -> None:
        self._add(server)

    async def start(self) -> None:
        pass

    def drain(self) -> None:
        pass

    async def stop(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Served:
    """Where the service answers: its gRPC ``address`` and its ``metrics_url`` (one nothing listens on when
    metrics are off)."""

    address: str
    metrics_url: str


@asynccontextmanager
async def served(
    service: Service,
    metrics: bool = True,
    ready_timeout_s: float = 120.0,
    tls: tuple[ServerTLS, ClientTLS] | None = None,
) -> AsyncIterator[Served]:
    """Serve ``service`` until the block ends, once health says SERVING (its ``start()`` returned); over TLS with
    ``tls`` (the server's, and a client's that health checks with)."""
    port, metrics_port = free_ports(2)
    stop = asyncio.Event()
    server_tls, checker_tls = (None, None) if tls is None else tls
    config = ServerConfig(
        "127.0.0.1", port, grace_s=1.0, metrics_port=metrics_port if metrics else None, tls=server_tls
    )
    task = asyncio.create_task(serve(service, config, stop))
    ready = asyncio.create_task(wait_until_serving(f"127.0.0.1:{port}", timeout_s=ready_timeout_s, tls=checker_tls))
    try:
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # serve() failed: its error, at once
        await ready
        yield Served(f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        ready.cancel()
        stop.set()
        await asyncio.wait_for(task, 60)
