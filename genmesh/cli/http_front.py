"""The HTTP front in `genmesh up`: `genmesh serve http` started once the gateway is SERVING, ready when its
``/healthz`` answers, stopped before the mesh (so that running answers end first)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

from gateway.http.healthcheck import answers
from genmesh import mesh
from genmesh.cli.certs import CLIENT
from genmesh.cli.launcher import Mesh, ServiceProcess, free_port, start_service
from genmesh.tasks import wait_within

HTTP = mesh.ServiceSpec("http", "gateway.http.server", 8080, "")
"""The HTTP front: not a gRPC service of the mesh (no grpc.health.v1), a client of the gateway."""


def http_args(running: Mesh, host: str, port: int, tools: bool = True) -> list[str]:
    """`genmesh serve http` before ``running``'s gateway (with the client certificate of a TLS mesh), passing the
    tools service for the web page's tool picker."""
    args = ["serve", "http", "--host", host, "--port", str(port), "--gateway", running.address(mesh.GATEWAY.name)]
    if tools and mesh.TOOLS.name in running.services:
        args += ["--tools", running.address(mesh.TOOLS.name)]
    if running.tls is not None:
        certs = running.tls
        args += ["--upstream-tls-ca", str(certs.ca)]
        args += ["--upstream-tls-cert", str(certs.cert(CLIENT)), "--upstream-tls-key", str(certs.key(CLIENT))]
    return args


async def start_http(
    running: Mesh, host: str, port: int, log_dir: Path | None, timeout_s: float, metrics: bool = False
) -> ServiceProcess:
    """Start the HTTP front and wait until ``http://host:port/healthz`` answers; RuntimeError (with its log) when it
    exits first or is not ready in ``timeout_s``. With ``metrics``, it serves /metrics on a free port
    (``ServiceProcess.metrics_url``)."""
    address = f"{host}:{port}"
    args, metrics_url = http_args(running, host, port), ""
    if metrics:
        metrics_port = free_port(host)
        args += ["--metrics-port", str(metrics_port)]
        metrics_url = f"http://{host}:{metrics_port}/metrics"
    service = await start_service(HTTP, args, address, log_dir, metrics_url=metrics_url)
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout_s
    while loop.time() < until:
        if service.process.returncode is not None:
            raise RuntimeError(f"http exited with {service.process.returncode}:\n{service.log_tail()}")
        if await asyncio.to_thread(answers, address, 1.0) is None:
            return service
        await asyncio.sleep(0.1)
    await stop_http(service, 1.0)
    raise RuntimeError(f"http not ready in {timeout_s:.0f} s:\n{service.log_tail()}")


async def stop_http(service: ServiceProcess, grace_s: float) -> None:
    """SIGTERM (running answers get ``grace_s``), then SIGKILL."""
    if service.process.returncode is None:
        service.process.send_signal(signal.SIGTERM)
    if not await wait_within(service.process.wait(), grace_s + 5.0):
        with contextlib.suppress(ProcessLookupError):
            service.process.kill()
        await service.process.wait()
