"""Health follows readiness; SIGTERM drains in-flight streams within the grace period."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import pytest

from genmesh import mesh as topology
from genmesh.channels import open_channel
from genmesh.cli.launcher import free_port, free_ports, start_service, wait_ready
from genmesh.health import check
from genmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc


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
            await wait_ready(gateway, timeout_s=120)
            assert await check(channel) == "SERVING"
            assert await check(channel, topology.GATEWAY.grpc_service) == "SERVING"
    finally:
        for service in [gateway, *upstreams]:
            if service.process.returncode is None:
                service.process.kill()
            await service.process.wait()


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
            call = stub.Generate(inference_pb2.GenerateRequest(prompt="The import statement", sampling=sampling))
            received = 0
            async for message in call:
                if message.HasField("delta"):
                    received += len(message.delta.token_ids)
                    if received == 1:
                        service.process.send_signal(signal.SIGTERM)
                        await asyncio.sleep(0.2)
                        assert await check(channel) in ("NOT_SERVING", "UNREACHABLE")
                        with pytest.raises(grpc.aio.AioRpcError) as refused:
                            async for _ in stub.Generate(inference_pb2.GenerateRequest(prompt="x"), timeout=5):
                                pass
                        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                else:
                    done = message.complete
            assert done.usage.completion_tokens == received
            assert done.finish_reason in (common_pb2.FINISH_REASON_LENGTH, common_pb2.FINISH_REASON_STOP)
        assert await asyncio.wait_for(service.process.wait(), 30) == 0
    finally:
        if service.process.returncode is None:
            service.process.kill()
            await service.process.wait()
