"""Real TLS services for the security tests: a tools service (no model, quick to start) with TLS flags, the
health of a service as a given client sees it, and waiting for a line in a service's log."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genmesh import mesh
from genmesh.channels import open_channel
from genmesh.cli.certs import CertDir
from genmesh.cli.launcher import ServiceProcess, free_port, start_service, wait_ready
from genmesh.tls import ClientTLS


def tls_flags(cert: Path, key: Path, ca: Path, client_auth: str = "require") -> list[str]:
    return ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(ca), "--tls-client-auth", client_auth]


def tools_flags(certs: CertDir, client_auth: str = "require") -> list[str]:
    """Serve TLS with the tools certificate of ``certs``."""
    return tls_flags(certs.cert("tools"), certs.key("tools"), certs.ca, client_auth)


async def start_tools(
    log_dir: Path, flags: list[str], ready_tls: ClientTLS | None, host: str = "127.0.0.1"
) -> ServiceProcess:
    """A tools service on a free port with ``flags``, SERVING as a client with ``ready_tls`` sees it."""
    port = free_port()
    args = ["serve", "tools", "--host", host, "--port", str(port), "--retrieval-target", "", *flags]
    service = await start_service(mesh.TOOLS, args, f"127.0.0.1:{port}", log_dir, tls=ready_tls)
    await wait_ready(service, 60)
    return service


async def health_as(address: str, tls: ClientTLS | None) -> str:
    """SERVING (or another status) when the client gets through; else the failed call's code name. The deadline
    is long: a refused connection must fail by itself, UNAVAILABLE, not run into it."""
    async with open_channel(address, tls=tls) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
        except grpc.aio.AioRpcError as error:
            return str(error.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


async def wait_for_log(service: ServiceProcess, needle: str, timeout_s: float = 30.0) -> str:
    """The first line of the service's log containing ``needle``, once it is written."""
    assert service.log_path is not None
    async with asyncio.timeout(timeout_s):
        while True:
            for line in service.log_path.read_text(errors="replace").splitlines():
                if needle in line:
                    return line
            await asyncio.sleep(0.05)


async def stop(service: ServiceProcess) -> None:
    if service.process.returncode is None:
        service.process.terminate()
    await service.process.wait()
