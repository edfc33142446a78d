"""A client that cancels its gateway stream cancels the inference stream behind it."""

from __future__ import annotations

import asyncio
import time

from genmesh.cli.launcher import Mesh
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc, inference_pb2, inference_pb2_grpc


async def _running(inference: inference_pb2_grpc.InferenceServiceStub) -> int:
    load = await inference.GetLoad(inference_pb2.GetLoadRequest(), timeout=5)
    return int(load.running)


async def test_cancel_reaches_inference(
    mesh: Mesh,
    gateway: gateway_pb2_grpc.GatewayServiceStub,
    inference: inference_pb2_grpc.InferenceServiceStub,
) -> None:
    request = gateway_pb2.GatewayRequest(request_id="cancel-me-1", question="Explain the import system in detail.")
    request.sampling.max_tokens = 4096  # far more than it will be allowed to produce
    request.retrieval.disabled = True
    call = gateway.Generate(request, timeout=120)
    async for event in call:
        if event.HasField("delta"):
            break
    assert await _running(inference) == 1, "the generation is running in the inference service"

    call.cancel()
    deadline = time.monotonic() + 5
    while await _running(inference) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert await _running(inference) == 0, "inference stopped generating for the cancelled stream"

    # The inference service itself recorded the Generate call as cancelled.
    log = mesh.services["inference"].log_path
    assert log is not None
    deadline = time.monotonic() + 5
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = [ln for ln in log.read_text().splitlines() if "request_id=cancel-me-1" in ln and "method=" in ln]
        if lines:
            break
        await asyncio.sleep(0.05)
    assert lines and "status=CANCELLED" in lines[-1], lines
