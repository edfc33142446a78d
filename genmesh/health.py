"""Client side of grpc.health.v1: ask a service whether it is SERVING, wait until it is, or follow its status."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genmesh.channels import open_channel
from genmesh.tls import ClientTLS
from genmesh.version import VERSION_HEADER

SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass(frozen=True, slots=True)
class Health:
    """A health Check's answer: the status name ("SERVING", "NOT_SERVING", ``STATUS_<n>`` for a value this
    client does not know) and the genmesh version the server sent, or the error of a check that got no answer."""

    status: str = ""
    version: str = ""
    error: grpc.aio.AioRpcError | None = None

    @property
    def answered(self) -> bool:
        return self.error is None


async def check_health(channel: grpc.aio.Channel, timeout_s: float, service: str = "") -> Health:
    """Ask ``channel``'s server for the health of ``service`` (the whole server by default) and its version."""
    call = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    try:
        response = await call
        trailing = await call.trailing_metadata()
    except grpc.aio.AioRpcError as error:
        return Health(error=error)
    version = next((str(v) for k, v in trailing or () if k == VERSION_HEADER), "")
    known = health_pb2.HealthCheckResponse.ServingStatus.DESCRIPTOR.values_by_number.get(response.status)
    return Health(f"STATUS_{response.status}" if known is None else known.name, version)


async def check(channel: grpc.aio.Channel, service: str = "", timeout_s: float = 1.0) -> str:
    """The service's status name (SERVING, NOT_SERVING, ...), or UNREACHABLE."""
    health = await check_health(channel, timeout_s, service)
    return health.status if health.answered else "UNREACHABLE"


async def wait_until_serving(
    target: str, service: str = "", timeout_s: float = 60.0, poll_s: float = 0.1, tls: ClientTLS | None = None
) -> None:
    """Return once ``target`` reports SERVING (over TLS with ``tls``); TimeoutError naming the last status
    otherwise."""
    deadline = time.monotonic() + timeout_s
    status = "UNREACHABLE"
    async with open_channel(target, tls=tls) as channel:
        while time.monotonic() < deadline:
            status = await check(channel, service, timeout_s=min(1.0, max(0.05, deadline - time.monotonic())))
            if status == "SERVING":
                return
            await asyncio.sleep(poll_s)
    raise TimeoutError(f"{target} is {status} after {timeout_s:.0f} s")


async def watch(
    channel: grpc.aio.Channel, on_status: Callable[[bool, str], None], service: str = "", retry_s: float = 0.2
) -> None:
    """Follow ``service``'s health (grpc.health.v1 Watch) until cancelled: ``on_status(serving, status)`` on
    every change, and ``on_status(False, ...)`` when the stream breaks (the service died or restarts). The
    stream is reopened with wait_for_ready, so a service that comes back is seen as soon as it is reachable."""
    stub = health_pb2_grpc.HealthStub(channel)
    while True:
        try:
            async for response in stub.Watch(health_pb2.HealthCheckRequest(service=service), wait_for_ready=True):
                name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
                on_status(response.status == SERVING, name)
            on_status(False, "health stream ended")
        except grpc.aio.AioRpcError as error:
            on_status(False, f"unreachable ({error.code().name})")
        await asyncio.sleep(retry_s)
