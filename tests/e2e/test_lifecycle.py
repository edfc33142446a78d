"""Health follows readiness; SIGTERM drains in-flight streams within the grace period and cancels the rest after it."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio
from support.chaos import ports_of, wait_for_log
from support.napping import NAPPING, SPEC, tools_env
from support.streams import Collected, collect

from genmesh import mesh as topology
from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, free_port, free_ports, start_service, wait_ready
from genmesh.health import check
from genmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, inference_pb2, inference_pb2_grpc

GATEWAY_GRACE_S = 5.0


async def test_gateway_is_not_serving_until_its_upstreams_are(log_root: Path) -> None:
    ports = dict(zip((s.name for s in topology.SERVICES), free_ports(len(topology.SERVICES)), strict=True))
    hosts = {s.name: "127.0.0.1" for s in topology.SERVICES}
    log_dir = log_root / "readiness"
    gateway_address = f"127.0.0.1:{ports['gateway']}"
    gateway = await start_service(
        topology.GATEWAY, topology.serve_args(topology.GATEWAY, "127.0.0.1", ports, hosts), gateway_address, log_dir
    )
    upstreams = []
    try:
        async with open_channel(gateway_address) as channel:
            status = "UNREACHABLE"
            for _ in range(100):
                status = await check(channel)
                if status != "UNREACHABLE":
                    break
                await asyncio.sleep(0.05)
            assert status == "NOT_SERVING"
            assert await check(channel, topology.GATEWAY.grpc_service) == "NOT_SERVING"

            for spec in (topology.RETRIEVAL, topology.TOOLS, topology.INFERENCE):
                args = topology.serve_args(spec, "127.0.0.1", ports, hosts)
                upstreams.append(await start_service(spec, args, f"127.0.0.1:{ports[spec.name]}", log_dir))
            await wait_ready(gateway, timeout_s=300)  # a retrieval service that embeds the demo first takes long
            assert await check(channel) == "SERVING"
            assert await check(channel, topology.GATEWAY.grpc_service) == "SERVING"
    finally:
        for service in [gateway, *upstreams]:
            if service.process.returncode is None:
                service.process.kill()
            await service.process.wait()


async def _refused_once_stopping(channel: grpc.aio.Channel, stub: inference_pb2_grpc.InferenceServiceStub) -> None:
    """Wait until the service reports it is not serving, then until it refuses a new call with UNAVAILABLE (health
    turns NOT_SERVING just before the server stops taking calls; a probe that slips in asks for one token)."""
    async with asyncio.timeout(30):
        while await check(channel) == "SERVING":
            await asyncio.sleep(0.02)
        while True:
            probe = inference_pb2.GenerateRequest(prompt="x", sampling=common_pb2.SamplingParams(max_tokens=1))
            try:
                async for _ in stub.Generate(probe, timeout=5):
                    pass
            except grpc.aio.AioRpcError as refused:
                assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused
                return
            await asyncio.sleep(0.02)


async def test_sigterm_lets_an_inflight_stream_finish(log_root: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    args = ["serve", "inference", "--port", str(port), "--grace", "20", "--threads", "1"]
    service = await start_service(topology.INFERENCE, args, address, log_root / "sigterm")
    try:
        await wait_ready(service, timeout_s=120)
        async with open_channel(address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            sampling = common_pb2.SamplingParams(max_tokens=160, temperature=0.0)
            request = inference_pb2.GenerateRequest(
                request_id="drained-1", prompt="The import statement", sampling=sampling
            )
            stream = stub.Generate(request).__aiter__()
            first = await anext(stream)
            assert first.HasField("delta")
            service.process.send_signal(signal.SIGTERM)
            await _refused_once_stopping(channel, stub)
            rest = [message async for message in stream]
        tokens = [*first.delta.token_ids, *(t for m in rest[:-1] for t in m.delta.token_ids)]
        done = rest[-1].complete
        assert done.usage.completion_tokens == len(tokens), "the stream was drained to its end, no token lost"
        assert done.finish_reason in (common_pb2.FINISH_REASON_LENGTH, common_pb2.FINISH_REASON_STOP)
        assert await asyncio.wait_for(service.process.wait(), 30) == 0
        # It was still in flight when the service began stopping: its line is written when it ends.
        assert service.log_path is not None
        lines = service.log_path.read_text().splitlines()
        stopping = next(i for i, line in enumerate(lines) if "msg=stopping" in line)
        (drained,) = [i for i, line in enumerate(lines) if "msg=rpc " in line and "request_id=drained-1" in line]
        assert stopping < drained and "status=OK" in lines[drained], lines[drained]
    finally:
        if service.process.returncode is None:
            service.process.kill()
            await service.process.wait()


@pytest_asyncio.fixture
async def draining_gateway(mesh: Mesh, log_root: Path) -> AsyncIterator[Mesh]:
    """A gateway with a 5 s grace and a 120 s tool budget, with a tools service of its own (with the 'nap' tool),
    on the default mesh's retrieval and inference."""
    host = "127.0.0.1"
    tools_port, gateway_port = free_ports(2)
    ports = {**ports_of(mesh), "tools": tools_port, "gateway": gateway_port}
    hosts = {s.name: host for s in topology.SERVICES}
    extra = {
        "tools": ["--tools-module", SPEC],
        "gateway": ["--grace", str(GATEWAY_GRACE_S), "--tools-budget-ms", "120000"],
    }
    running = Mesh()
    try:
        for spec in (topology.TOOLS, topology.GATEWAY):
            args = topology.serve_args(spec, host, ports, hosts) + extra[spec.name]
            service = await start_service(spec, args, f"{host}:{ports[spec.name]}", log_root / "drain", tools_env())
            running.services[spec.name] = service
            await wait_ready(service, 120)
        yield running
    finally:
        await running.stop(grace_s=1.0)


def _napping_request(request_id: str, nap_ms: int) -> gateway_pb2.GatewayRequest:
    request = gateway_pb2.GatewayRequest(request_id=request_id, question="What does the with statement do?")
    request.retrieval.disabled = True
    request.sampling.max_tokens = 4
    request.sampling.temperature = 0.0
    request.tool_calls.add(call_id="nap", name="nap", arguments_json=f'{{"ms": {nap_ms}}}')
    return request


async def _outcome(call: grpc.aio.UnaryStreamCall) -> tuple[Collected | grpc.StatusCode, float]:
    """The stream's events, or the status it failed with; and when it ended."""
    try:
        got: Collected | grpc.StatusCode = await collect(call)
    except grpc.aio.AioRpcError as error:
        got = error.code()
    return got, time.monotonic()


async def test_gateway_sigterm_drains_within_the_grace_then_cancels_the_rest(draining_gateway: Mesh) -> None:
    gateway = draining_gateway.services["gateway"]
    async with open_channel(gateway.address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        # Both are in flight, each in its tool call: one ends within the grace, the other long after it.
        short = asyncio.create_task(_outcome(stub.Generate(_napping_request("drain-short", 1500), timeout=60)))
        long = asyncio.create_task(_outcome(stub.Generate(_napping_request("drain-long", 60_000), timeout=60)))
        for request_id in ("drain-short", "drain-long"):
            await wait_for_log(draining_gateway, "tools", NAPPING, f"request_id={request_id}")
        signalled = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        (drained, _), (cut, cut_at) = await asyncio.wait_for(asyncio.gather(short, long), 40)

    assert isinstance(drained, Collected), f"the stream that ends within the grace was drained, not {drained}"
    assert drained.completion.usage.completion_tokens == len(drained.token_ids) > 0
    results = [json.loads(e.tool_result.result_json) for e in drained.events if e.HasField("tool_result")]
    assert results == [{"slept_ms": 1500}], "its tool call ran to its end"
    # The client sees CANCELLED, or UNAVAILABLE when the server's GOAWAY comes first; the gateway logs CANCELLED.
    assert cut in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE), cut
    assert GATEWAY_GRACE_S <= cut_at - signalled < GATEWAY_GRACE_S + 4, "cancelled when its grace ran out"
    assert await asyncio.wait_for(gateway.process.wait(), 30) == 0
    assert gateway.log_path is not None
    lines = gateway.log_path.read_text().splitlines()
    stopping = next(i for i, line in enumerate(lines) if "msg=stopping" in line)
    (short_line,) = [i for i, line in enumerate(lines) if "msg=rpc " in line and "request_id=drain-short" in line]
    assert stopping < short_line and "status=OK" in lines[short_line], "it was in flight when stopping began"
    (long_line,) = [line for line in lines if "msg=rpc " in line and "request_id=drain-long" in line]
    assert "status=CANCELLED" in long_line, long_line
