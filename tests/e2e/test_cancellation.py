"""A cancelled, aborted or expired generation frees its inference row at once; a full queue is refused with RetryInfo.

One inference service of its own runs one generation and lets none wait (``--max-running 1 --max-waiting 0``), so a
row still held shows as RESOURCE_EXHAUSTED; its forward passes are slowed to 20 ms (support.slow_inference), so a
generation needs over 10 s to end on its own and cannot do so inside any window here. A gateway in front of it uses
the session mesh's retrieval and tools.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from support.jobs_gateway import stop
from support.slow_inference import start_slow_inference
from support.streams import collect

from genmesh import mesh as topology
from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, ServiceProcess, free_port, start_service, wait_ready
from genmesh.status import error_info, retry_delay_s
from genmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, inference_pb2, inference_pb2_grpc

SLACK_TOKENS = 50
"""Tokens a generation may still add between the cancel and its row being freed: a few steps, plus the time the
cancel takes to arrive (50 slowed steps are over a second); a generation left running adds ~450."""


@pytest_asyncio.fixture(scope="module")
async def one_slot(log_root: Path) -> AsyncIterator[ServiceProcess]:
    """The slowed inference service with a single row and no queue."""
    flags = ("--threads", "1", "--max-running", "1", "--max-waiting", "0")
    service = await start_slow_inference(log_root / "one-slot-inference", *flags)
    yield service
    await stop(service)


@pytest_asyncio.fixture(scope="module")
async def front(mesh: Mesh, one_slot: ServiceProcess, log_root: Path) -> AsyncIterator[ServiceProcess]:
    """A gateway whose inference is ``one_slot``."""
    ports = {name: int(service.address.rsplit(":", 1)[1]) for name, service in mesh.services.items()}
    ports |= {"inference": int(one_slot.address.rsplit(":", 1)[1]), "gateway": free_port()}
    hosts = {s.name: "127.0.0.1" for s in topology.SERVICES}
    args = topology.serve_args(topology.GATEWAY, "127.0.0.1", ports, hosts)
    gateway = await start_service(topology.GATEWAY, args, f"127.0.0.1:{ports['gateway']}", log_root / "one-slot-gw")
    try:
        await wait_ready(gateway, timeout_s=60)
        yield gateway
    finally:
        await stop(gateway)


@pytest_asyncio.fixture
async def slot(one_slot: ServiceProcess) -> AsyncIterator[inference_pb2_grpc.InferenceServiceStub]:
    async with open_channel(one_slot.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        await _wait_idle(stub)
        yield stub


@pytest_asyncio.fixture
async def front_gateway(front: ServiceProcess) -> AsyncIterator[gateway_pb2_grpc.GatewayServiceStub]:
    async with open_channel(front.address) as channel:
        yield gateway_pb2_grpc.GatewayServiceStub(channel)


def _generate(request_id: str, max_tokens: int = 4096) -> inference_pb2.GenerateRequest:
    request = inference_pb2.GenerateRequest(request_id=request_id, prompt="The import system", truncate_prompt=True)
    request.sampling.max_tokens = max_tokens
    request.sampling.temperature = 0.0
    return request


def _ask(request_id: str, max_tokens: int = 4096) -> gateway_pb2.GatewayRequest:
    request = gateway_pb2.GatewayRequest(request_id=request_id, question="Explain the import system in detail.")
    request.sampling.max_tokens = max_tokens
    request.sampling.temperature = 0.0
    request.retrieval.disabled = True
    return request


async def _load(stub: inference_pb2_grpc.InferenceServiceStub) -> inference_pb2.GetLoadResponse:
    load: inference_pb2.GetLoadResponse = await stub.GetLoad(inference_pb2.GetLoadRequest(), timeout=5)
    return load


async def _wait_idle(stub: inference_pb2_grpc.InferenceServiceStub) -> None:
    """Wait out whatever an earlier test left generating (a failed test's stream ends with its channel)."""
    end = time.monotonic() + 60
    while (await _load(stub)).running:
        assert time.monotonic() < end, "the inference service stays busy"
        await asyncio.sleep(0.05)


async def _assert_row_freed_within_a_few_steps(stub: inference_pb2_grpc.InferenceServiceStub, since: int) -> None:
    """The row is freed before the generation holding ``since`` cached tokens has added SLACK_TOKENS more."""
    while True:
        load = await _load(stub)
        if load.running == 0:
            assert load.kv_used_tokens == 0, load
            return
        grown = load.kv_used_tokens - since
        assert grown <= SLACK_TOKENS, f"the generation went on for {grown} tokens after it was stopped"
        await asyncio.sleep(0.005)


async def _rpc_lines(service: ServiceProcess, needle: str) -> list[str]:
    """The service's per-RPC log lines that contain ``needle``, once there are any (or after 10 s)."""
    assert service.log_path is not None
    end = time.monotonic() + 10
    while True:
        text = service.log_path.read_text(errors="replace")
        lines = [line for line in text.splitlines() if "msg=rpc " in line and needle in line]
        if lines or time.monotonic() > end:
            return lines
        await asyncio.sleep(0.05)


async def _first_delta(call: grpc.aio.UnaryStreamCall) -> None:
    """Read the stream up to its first token delta (past a gateway's sources, if any)."""
    while True:
        message = await call.read()
        assert message is not grpc.aio.EOF and not message.HasField("complete"), message
        if message.HasField("delta"):
            return


async def test_a_client_cancelling_its_gateway_stream_frees_the_inference_row(
    front_gateway: gateway_pb2_grpc.GatewayServiceStub,
    slot: inference_pb2_grpc.InferenceServiceStub,
    one_slot: ServiceProcess,
) -> None:
    call = front_gateway.Generate(_ask("cancel-me-1"), timeout=120)
    await _first_delta(call)
    load = await _load(slot)
    assert load.running == 1, "the generation holds the only row"

    call.cancel()
    await _assert_row_freed_within_a_few_steps(slot, load.kv_used_tokens)
    # With no queue, a row still held would refuse this one.
    after = await collect(front_gateway.Generate(_ask("after-cancel", max_tokens=3), timeout=60))
    assert after.completion.finish_reason == common_pb2.FINISH_REASON_LENGTH
    lines = await _rpc_lines(one_slot, "request_id=cancel-me-1")
    generate = [line for line in lines if "method=/genmesh.v1.InferenceService/Generate" in line]
    assert generate and "status=CANCELLED" in generate[-1], lines


async def test_abort_of_a_running_request_finds_it_and_frees_its_row(
    slot: inference_pb2_grpc.InferenceServiceStub,
) -> None:
    call = slot.Generate(_generate("abort-running"), timeout=120)
    await _first_delta(call)
    assert (await _load(slot)).running == 1

    aborted = await slot.Abort(inference_pb2.AbortRequest(request_id="abort-running"), timeout=5)
    assert aborted.found
    rest = []
    while (message := await call.read()) is not grpc.aio.EOF:
        rest.append(message)
    completion = rest[-1].complete
    assert completion.finish_reason == common_pb2.FINISH_REASON_CANCELLED, rest[-1]
    load = await _load(slot)  # the row is freed before the closing record is sent
    assert (load.running, load.waiting, load.kv_used_tokens) == (0, 0, 0)

    again = await slot.Abort(inference_pb2.AbortRequest(request_id="abort-running"), timeout=5)
    assert not again.found, "an ended request is not found"
    after = [message async for message in slot.Generate(_generate("after-abort", max_tokens=3), timeout=60)]
    assert after[-1].complete.finish_reason == common_pb2.FINISH_REASON_LENGTH


async def test_a_deadline_passing_mid_generation_frees_the_row(
    slot: inference_pb2_grpc.InferenceServiceStub,
) -> None:
    call = slot.Generate(_generate("expires"), timeout=2.0)
    await _first_delta(call)
    load = await _load(slot)
    assert load.running == 1, "the engine is generating when the deadline passes"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while await call.read() is not grpc.aio.EOF:
            pass
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await _assert_row_freed_within_a_few_steps(slot, (await _load(slot)).kv_used_tokens)


async def test_a_full_inference_queue_is_refused_with_retry_info_and_the_gateway_passes_it_on(
    front_gateway: gateway_pb2_grpc.GatewayServiceStub,
    slot: inference_pb2_grpc.InferenceServiceStub,
) -> None:
    # A finished generation moves the engine's retry hint off its initial 1 s, the gateway's fallback.
    [message async for message in slot.Generate(_generate("warm", max_tokens=2), timeout=60)]
    holder = slot.Generate(_generate("holder"), timeout=120)
    try:
        await _first_delta(holder)
        with pytest.raises(grpc.aio.AioRpcError) as direct:
            [message async for message in slot.Generate(_generate("one-too-many", 4), timeout=30)]
        with pytest.raises(grpc.aio.AioRpcError) as relayed:
            await collect(front_gateway.Generate(_ask("one-too-many-via-gateway", 4), timeout=30))
    finally:
        holder.cancel()
    hint = retry_delay_s(direct.value)
    assert hint is not None and hint > 0 and hint != 1.0
    for error in (direct.value, relayed.value):
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        info = error_info(error)
        assert info is not None and info.reason == "INFERENCE_QUEUE_FULL", info
        assert dict(info.metadata) == {"maxWaiting": "0"}
    assert retry_delay_s(relayed.value) == hint, "the gateway passes on the engine's own hint"
