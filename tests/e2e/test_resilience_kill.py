"""kill -9 of inference mid-stream: clients get UNAVAILABLE at once; the gateway lives on and uses the restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio
from support.chaos import kill9, restart
from support.streams import collect

from genmesh import health
from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, start_mesh
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc

CLIENTS = 4
INFERENCE_ARGS = ["--threads", "1"]


@pytest_asyncio.fixture(scope="module")
async def kill_mesh(log_root: Path) -> AsyncIterator[Mesh]:
    running = await start_mesh(log_dir=log_root / "kill", extra_args={"inference": INFERENCE_ARGS})
    yield running
    await running.stop(grace_s=2.0)


def _long_answer(i: int) -> gateway_pb2.GatewayRequest:
    request = gateway_pb2.GatewayRequest(
        request_id=f"doomed-{i}", question="Explain how the garbage collector finds reference cycles."
    )
    request.sampling.max_tokens = 4096  # greedy, it runs to the model's context: seconds of tokens
    request.sampling.temperature = 0.0
    request.retrieval.disabled = True
    return request


async def test_kill_inference_mid_stream(kill_mesh: Mesh) -> None:
    async with open_channel(kill_mesh.address("gateway")) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        calls = [gateway.Generate(_long_answer(i), timeout=120) for i in range(CLIENTS)]
        streams = [call.__aiter__() for call in calls]
        for stream in streams:  # every client is past its first token
            while not (await anext(stream)).HasField("delta"):
                pass

        async def outcome(stream: AsyncIterator[gateway_pb2.GatewayEvent]) -> tuple[grpc.StatusCode, float]:
            try:
                async for _ in stream:
                    pass
            except grpc.aio.AioRpcError as error:
                return error.code(), time.monotonic()
            return grpc.StatusCode.OK, time.monotonic()

        readers = [asyncio.create_task(outcome(stream)) for stream in streams]
        await kill9(kill_mesh, "inference")
        reaped_at = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*readers), timeout=60)
        for code, ended in results:
            assert code == grpc.StatusCode.UNAVAILABLE
            # At once: the broken connection ends the streams, not a keepalive timeout (10 s and more) nor their
            # deadline (120 s). Counted from when the process was gone, with room for a loaded machine.
            assert ended - reaped_at < 5.0, f"a client waited {ended - reaped_at:.2f} s for its UNAVAILABLE"

        gateway_log = kill_mesh.services["gateway"].log_path
        assert gateway_log is not None
        retried = [line for line in gateway_log.read_text().splitlines() if "retrying Generate" in line]
        assert not [line for line in retried if "request_id=doomed-" in line], "never retried after a token"
        assert await health.check(channel, timeout_s=5) == "SERVING", "the gateway stays SERVING"
        # While inference is down, new requests fail fast with UNAVAILABLE rather than hang.
        started = time.monotonic()
        try:
            await collect(gateway.Generate(_long_answer(99), timeout=30))
            raise AssertionError("a request succeeded with inference down")
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        assert time.monotonic() - started < 10

        await restart(kill_mesh, "inference", INFERENCE_ARGS)
        request = gateway_pb2.GatewayRequest(request_id="after-restart", question="What is a generator?")
        request.sampling.max_tokens = 8
        got = await collect(gateway.Generate(request, timeout=60))
        assert got.token_ids, "the restarted inference service answers through the same gateway"
        assert got.completion.usage.completion_tokens == len(got.token_ids)
