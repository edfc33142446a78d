"""Server bootstrap shared by every service: interceptor, health, reflection, readiness, draining shutdown."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from genmesh import tracing
from genmesh.faults import FaultInjector, parse_faults
from genmesh.interceptor import Admission, ServiceInterceptor
from genmesh.logs import configure_logging
from genmesh.metrics import MetricsServer, RpcMetrics, process_metrics, restore, use
from genmesh.reflection import enable_reflection
from genmesh.tasks import wait_within
from genmesh.tls import ServerTLS, is_loopback, load_server_material, server_credentials
from genmesh.tracing import TraceSettings, installed
from genmesh.tracing.server import TracingInterceptor

log = logging.getLogger("genmesh.server")

MAX_MESSAGE_BYTES = 16 * 1024 * 1024

SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Where and how a service listens."""

    host: str
    port: int
    grace_s: float = 10.0
    faults: str = ""
    drain_delay_s: float = 0.0
    tls: ServerTLS | None = None
    """Serve TLS with these files (reloaded on SIGHUP or change); plaintext when None."""
    reflection: bool = True
    """Serve server reflection (v1 and v1alpha); without it reflection calls are UNIMPLEMENTED."""
    metrics_port: int | None = None
    """Serve Prometheus metrics over HTTP on ``host`` at this port (0: a free one); None: no metrics at all."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is out of range 0..65535")
        if self.grace_s < 0:
            raise ValueError("grace must not be negative")
        if self.drain_delay_s < 0:
            raise ValueError("drain delay must not be negative")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics port {self.metrics_port} is out of range 0..65535")
        parse_faults(self.faults)  # fail at start-up, not on the first call


class Service(Protocol):
    """What a service plugs into the bootstrap."""

    #: Full gRPC service name, e.g. ``genmesh.v1.InferenceService``; health reports under it.
    service_name: str
    #: Further gRPC services served on the same port (the gateway's JobService); reflection lists them and
    #: health reports under them too.
    also_serves: tuple[str, ...]
    #: Server interceptors of its own (the gateway's API-key check); they run inside the shared one, so their
    #: GenmeshErrors become statuses and are logged like any handler's.
    interceptors: tuple[grpc.aio.ServerInterceptor, ...]

    def register(self, server: grpc.aio.Server) -> None:
        """Add the servicer to the server."""

    async def start(self) -> None:
        """Get ready to serve (load a model, open an index); health is SERVING after it returns."""

    def drain(self) -> None:
        """The service has begun to drain (health is NOT_SERVING; calls are still served): stop advertising for
        new work, and end endless streams (load feeds) that would otherwise hold the grace period."""

    async def stop(self) -> None:
        """Release resources after the server stopped."""


class StartupFailed(Exception):
    """``serve`` could not start (its message says why, for one line on stderr); nothing is left serving."""


async def serve(service: Service, config: ServerConfig, stop: asyncio.Event | None = None) -> None:
    """Run ``service`` until SIGTERM/SIGINT (or ``stop`` is set), then drain: health turns NOT_SERVING while
    calls are still served for the drain delay (skipped by a second signal, and by a service never ready), then
    new calls are refused with UNAVAILABLE and those in flight get the grace to finish; health checks are
    answered throughout. The server stops once nothing is in flight, or when the grace runs out."""
    stop = stop or asyncio.Event()
    hurry = asyncio.Event()
    admission = Admission()
    metrics = None if config.metrics_port is None else process_metrics()
    rpc_metrics = None if metrics is None else RpcMetrics(metrics)
    traced = [TracingInterceptor()] if tracing.enabled() else []  # first: the RPC's log line is inside its span
    server = grpc.aio.server(
        interceptors=[
            *traced,
            ServiceInterceptor(FaultInjector(parse_faults(config.faults)), admission, rpc_metrics),
            *service.interceptors,
        ],
        options=SERVER_OPTIONS,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service.register(server)
    names = (service.service_name, *service.also_serves)
    if config.reflection:
        enable_reflection(server, [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name])
    reloader = None
    if config.tls is None:
        port = server.add_insecure_port(f"{config.host}:{config.port}")
        if not is_loopback(config.host):
            log.warning(
                "listening without TLS on a non-loopback address: anyone who reaches it can read and send calls; "
                "set --tls-cert/--tls-key (docs/SECURITY.md)",
                extra={"service": service.service_name, "host": config.host},
            )
    else:
        credentials, reloader = server_credentials(config.tls)
        port = server.add_secure_port(f"{config.host}:{config.port}", credentials)

    async def set_health(status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for name in ("", *names):
            await health_servicer.set(name, status)

    def on_signal() -> None:
        (hurry if stop.is_set() else stop).set()

    await set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    exporter = None
    if metrics is not None and config.metrics_port is not None:  # before the model loads: scrapes see it load
        try:
            exporter = MetricsServer(metrics, config.host, config.metrics_port)
        except OSError as error:  # the port is taken, or the address is not this host's
            await server.stop(0)
            where, why = f"{config.host}:{config.metrics_port}", error.strerror or str(error)
            raise StartupFailed(f"cannot serve metrics on {where} (--metrics-port): {why}") from None
        log.info("metrics", extra={"service": service.service_name, "url": exporter.url})
    metrics_token = use(metrics)  # service.start() reads it (genmesh.metrics.current)
    await server.start()
    log.info(
        "listening",
        extra={"service": service.service_name, "host": config.host, "port": port, "tls": config.tls is not None},
    )

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    if reloader is not None:
        loop.add_signal_handler(signal.SIGHUP, reloader.request_reload)
    try:
        startup = asyncio.create_task(service.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({startup, stopping}, return_when=asyncio.FIRST_COMPLETED)
        drain_delay_s = 0.0  # a replica that never reported SERVING has no balancer to wait for
        if startup.done():
            startup.result()  # a failed start-up ends the process with its error
            await set_health(health_pb2.HealthCheckResponse.SERVING)
            log.info("ready", extra={"service": service.service_name})
            drain_delay_s = config.drain_delay_s
            await stopping
        else:
            startup.cancel()
        log.info(
            "stopping",
            extra={"service": service.service_name, "drain_delay_s": drain_delay_s, "grace_s": config.grace_s},
        )
        await health_servicer.enter_graceful_shutdown()  # NOT_SERVING for good, sent to every Watch stream
        service.drain()
        await wait_within(hurry.wait(), drain_delay_s)
        admission.close()
        log.info("refusing new calls", extra={"service": service.service_name, "in_flight": admission.running})
        await wait_within(admission.idle(), config.grace_s)
        # Stopping now cancels what is left: calls past the grace, health Watch streams.
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await server.stop(0)
        await service.stop()
        if exporter is not None:
            await exporter.close()
        restore(metrics_token)
        log.info("stopped", extra={"service": service.service_name})


def run(name: str, args: argparse.Namespace, build: Callable[[], Service]) -> None:
    """A service's ``main``: log as the flags say, build the service, serve until stopped.

    ``args`` holds the flags of ``genmesh.config.add_server_flags``.
    """
    configure_logging(name, args.log_level, args.log_format)
    try:
        trace_settings = TraceSettings(args.otlp_endpoint, args.trace_sample_ratio)
        tls = ServerTLS.from_flags(args.tls_cert, args.tls_key, args.tls_ca, args.tls_client_auth)
        if tls is not None:
            load_server_material(tls)  # unreadable or mismatched files stop start-up with a clear message
    except ValueError as error:
        sys.exit(f"genmesh serve {name}: {error}")
    config = ServerConfig(args.host, args.port, args.grace, args.faults, args.drain_delay, tls, args.reflection)
    if args.metrics_port >= 0:
        config = dataclasses.replace(config, metrics_port=args.metrics_port)
    with installed(name, trace_settings):  # before build(): the channels it opens trace; flushed at the end
        try:
            asyncio.run(serve(build(), config))
        except StartupFailed as error:
            sys.exit(f"genmesh serve {name}: {error}")
