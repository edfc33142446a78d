"""Draining a real service on SIGTERM: health says NOT_SERVING while calls are still served for --drain-delay,
then new calls are refused with UNAVAILABLE while a stream begun earlier runs to its end; the process exits 0.
A second SIGTERM cuts the drain delay short."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.napping import SPEC, tools_env

from genmesh import mesh
from genmesh.channels import open_channel
from genmesh.cli.launcher import ServiceProcess, free_port, start_service, wait_ready
from genmesh.health import check
from genmesh.interceptor import DRAINING_MESSAGE
from genmesh.v1 import common_pb2, tools_pb2, tools_pb2_grpc

DRAIN_DELAY_S = 2.0
LONG_NAP_MS = 5_000  # begun before SIGTERM, ends well after the drain delay
GRACE_S = 30.0  # far longer than the nap: the process must exit once the nap's stream ended, not at the grace


async def _start_tools(log_dir: Path, *flags: str) -> ServiceProcess:
    port = free_port()
    args = ["serve", "tools", "--port", str(port), "--retrieval-target", "", "--tools-module", SPEC, *flags]
    service = await start_service(mesh.TOOLS, args, f"127.0.0.1:{port}", log_dir, tools_env())
    await wait_ready(service, 60)
    return service


def _calculator(request_id: str) -> tools_pb2.InvokeRequest:
    call = common_pb2.ToolCall(call_id="c", name="calculator", arguments_json='{"expression": "6*7"}')
    return tools_pb2.InvokeRequest(request_id=request_id, call=call)


async def _until_not_serving(channel: grpc.aio.Channel) -> None:
    """Poll health until it says NOT_SERVING; it must answer every time (never a connection error)."""
    async with asyncio.timeout(10):
        while (status := await check(channel)) == "SERVING":
            await asyncio.sleep(0.02)
    assert status == "NOT_SERVING", status


async def _until_refused(stub: tools_pb2_grpc.ToolsServiceStub) -> grpc.aio.AioRpcError:
    """Call until a new call is refused; every call before that succeeds."""
    async with asyncio.timeout(20):
        for attempt in range(10_000):
            try:
                await stub.Invoke(_calculator(f"probe-{attempt}"), timeout=5)
            except grpc.aio.AioRpcError as refused:
                return refused
            await asyncio.sleep(0.05)
    raise AssertionError("never refused")


async def test_sigterm_drains_visibly_then_refuses_new_calls(tmp_path: Path) -> None:
    service = await _start_tools(tmp_path, "--drain-delay", str(DRAIN_DELAY_S), "--grace", str(GRACE_S))
    try:
        async with open_channel(service.address) as channel:
            stub = tools_pb2_grpc.ToolsServiceStub(channel)
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest()).__aiter__()
            assert (await anext(watch)).status == health_pb2.HealthCheckResponse.SERVING
            naps = [
                common_pb2.ToolCall(call_id=f"nap-{ms}", name="nap", arguments_json=json.dumps({"ms": ms}))
                for ms in (10, LONG_NAP_MS)
            ]
            stream = stub.InvokeMany(tools_pb2.InvokeManyRequest(request_id="in-flight", calls=naps), timeout=60)
            results = [await anext(stream.__aiter__())]  # the short nap's result: the stream is in flight

            signalled = time.monotonic()
            service.process.send_signal(signal.SIGTERM)
            await _until_not_serving(channel)
            watched = await asyncio.wait_for(anext(watch), 5)
            assert watched.status == health_pb2.HealthCheckResponse.NOT_SERVING, "Watch streams are told"
            served = await stub.Invoke(_calculator("during-the-delay"), timeout=5)
            assert json.loads(served.result.result_json)["value"] == 42, "calls are still served during the delay"

            refused = await _until_refused(stub)
            refused_after_s = time.monotonic() - signalled
            assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused
            assert refused.details() == DRAINING_MESSAGE, refused.details()
            assert refused_after_s >= DRAIN_DELAY_S, f"refused {refused_after_s:.2f} s after SIGTERM"
            assert await check(channel) == "NOT_SERVING", "health still answers while in-flight calls finish"
            assert not stream.done(), "the long nap was still running when new calls were refused"

            results += [r async for r in stream]
            stream_ended = time.monotonic()
            assert await stream.code() == grpc.StatusCode.OK
            slept = sorted(json.loads(r.result.result_json)["slept_ms"] for r in results)
            assert slept == [10, LONG_NAP_MS], "the stream begun before SIGTERM ran to its end"
            # The Watch stream is still open: it must not hold the process until the grace runs out.
            assert await asyncio.wait_for(service.process.wait(), GRACE_S) == 0
            assert time.monotonic() - stream_ended < GRACE_S / 3, "it exited once nothing was in flight"
    finally:
        if service.process.returncode is None:
            service.process.kill()
            await service.process.wait()


async def test_a_second_sigterm_skips_the_rest_of_the_drain_delay(tmp_path: Path) -> None:
    service = await _start_tools(tmp_path, "--drain-delay", "120", "--grace", "5")
    try:
        async with open_channel(service.address) as channel:
            service.process.send_signal(signal.SIGTERM)
            await _until_not_serving(channel)
            await tools_pb2_grpc.ToolsServiceStub(channel).Invoke(_calculator("still-served"), timeout=5)
            service.process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(service.process.wait(), 30) == 0
    finally:
        if service.process.returncode is None:
            service.process.kill()
            await service.process.wait()
