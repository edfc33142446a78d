"""`genmesh serve http`: the OpenAI-compatible HTTP/SSE and WebSocket front, a process of its own that calls the
gateway over gRPC (so keys, limits and jobs have one code path, and the front scales and fails on its own).

SIGTERM/SIGINT: stop accepting connections, let running answers finish for ``--grace`` seconds (WebSocket answers
first, new ones on open sockets refused with 503, then uvicorn closes the sockets and waits for HTTP answers), then
cut them (their gRPC calls are cancelled, so inference drops them)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import uvicorn

# Imported at start-up, not when serving: a missing dependency fails `genmesh serve http --help` too (the images'
# preflight in make compose-test), not the first request.
from gateway.http.app import build_app
from gateway.http.tools_route import tools_target
from genmesh import mesh
from genmesh.channels import open_channel
from genmesh.config import Flags, add_metrics_port_flag, add_upstream_tls_flags, parse
from genmesh.metrics import MetricsServer, process_metrics
from genmesh.tls import ClientTLS

if TYPE_CHECKING:
    from gateway.http.context import HttpContext, ToolsTarget
    from genmesh.metrics import Metrics

DEFAULT_PORT = 8080
log = logging.getLogger("genmesh.http")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genmesh serve http", description=__doc__)
    flags = Flags(parser, "GENMESH_HTTP")
    flags.add("--host", default="127.0.0.1", help="address to listen on")
    flags.add("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    flags.add("--gateway", default=f"127.0.0.1:{mesh.GATEWAY.default_port}", help="the gateway's host:port")
    flags.add(
        "--model-name",
        default="",
        help="the model name answered as OpenAI's `model`; empty: the served model's own id (from the gateway)",
    )
    flags.add(
        "--tools",
        default="",
        help="the tools service's host:port, for GET /v1/genmesh/tools (the web page's tool picker; reached with the "
        "upstream TLS flags); empty: not served, the page hides its picker",
    )
    flags.add("--grace", type=float, default=10.0, help="seconds running answers may finish at shutdown")
    flags.add(
        "--allowed-origins",
        default="",
        help="comma-separated browser origins (https://app.example) whose pages may open the WebSocket besides the "
        "front's own",
    )
    add_metrics_port_flag(flags)
    flags.add("--log-level", default="info", help="log level", choices=["debug", "info", "warning", "error"])
    add_upstream_tls_flags(flags)
    return parser


class _Server(uvicorn.Server):
    """uvicorn's server with genmesh's signal handling: the first SIGTERM/SIGINT stops it gracefully (exit 0,
    where uvicorn would re-raise the signal), a second one cuts the grace short."""

    def __init__(self, config: uvicorn.Config, ctx: HttpContext) -> None:
        super().__init__(config)
        self.ctx = ctx

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def stop(self) -> None:
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, let the WebSocket answers finish (uvicorn would close their sockets at once), then
        uvicorn's shutdown, which waits for the HTTP answers."""
        for server in self.servers:
            server.close()
        ctx = self.ctx
        ctx.draining = True
        loop = asyncio.get_running_loop()
        until = loop.time() + (self.config.timeout_graceful_shutdown or 0)
        while ctx.answers and not self.force_exit and loop.time() < until:
            await asyncio.wait(set(ctx.answers), timeout=0.1)
        await super().shutdown(sockets)


async def serve(args: argparse.Namespace, tls: ClientTLS | None, tools: ToolsTarget | None) -> None:
    """Serve until SIGTERM/SIGINT (uvicorn's handlers), then close the gateway channel (and the metrics server)."""

    metrics = process_metrics() if args.metrics_port >= 0 else None
    exporter = None
    if metrics is not None:
        try:
            exporter = MetricsServer(metrics, args.host, args.metrics_port)
        except OSError as error:  # the port is taken, or the address is not this host's
            why = error.strerror or str(error)
            raise SystemExit(f"genmesh serve http: cannot serve metrics on {args.host}:{args.metrics_port} "
                             f"(--metrics-port): {why}") from None  # fmt: skip
        log.info("metrics on %s", exporter.url)
    try:
        await _serve(args, tls, tools, metrics)
    finally:
        if exporter is not None:
            await exporter.close()


async def _serve(
    args: argparse.Namespace, tls: ClientTLS | None, tools: ToolsTarget | None, metrics: Metrics | None
) -> None:
    async with open_channel(args.gateway, tls=tls) as channel:
        origins = frozenset(o.strip() for o in args.allowed_origins.split(",") if o.strip())
        app = build_app(channel, model=args.model_name, tools=tools, allowed_origins=origins, metrics=metrics)
        config = uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            timeout_graceful_shutdown=args.grace,
            ws="websockets-sansio",
            lifespan="off",
        )
        server = _Server(config, app.state.ctx)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.stop)
        log.info("http front on http://%s:%d, gateway %s", args.host, args.port, args.gateway)
        await server.serve()


def main(argv: Sequence[str] | None = None) -> None:
    p = parser()
    args = parse(p, argv)
    try:
        tls = ClientTLS.from_flags(args.upstream_tls_ca, args.upstream_tls_cert, args.upstream_tls_key)
    except ValueError as error:
        p.error(str(error))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tools = tools_target(args.tools, args.upstream_tls_ca, args.upstream_tls_cert, args.upstream_tls_key)
    asyncio.run(serve(args, tls, tools))


if __name__ == "__main__":
    main()
