"""Error details clients branch on, through real gRPC: the inference queue's RESOURCE_EXHAUSTED has its own ErrorInfo
reason, and a ToolError's in-band google.rpc.Status carries the same code, message and violations as its deprecated
fields. (The gateway's stream cap and job queue: test_contract_jobs.py.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2

from genmesh import mesh as topology
from genmesh.channels import open_channel
from genmesh.cli.launcher import ServiceProcess, free_port, start_service, wait_ready
from genmesh.status import error_info, error_info_of, retry_delay_s
from genmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc, tools_pb2, tools_pb2_grpc

DOMAIN = "genmesh.dev"


@pytest_asyncio.fixture(scope="module")
async def one_slot_inference(log_root: Path) -> AsyncIterator[ServiceProcess]:
    """An inference service that runs one generation and lets none wait."""
    port = free_port()
    args = ["serve", "inference", "--port", str(port), "--threads", "1", "--max-running", "1", "--max-waiting", "0"]
    service = await start_service(topology.INFERENCE, args, f"127.0.0.1:{port}", log_root / "contract-inference")
    try:
        await wait_ready(service, 180)
        yield service
    finally:
        service.process.terminate()
        await service.process.wait()


def _generate(prompt: str, max_tokens: int) -> inference_pb2.GenerateRequest:
    request = inference_pb2.GenerateRequest(prompt=prompt, truncate_prompt=True)
    request.sampling.max_tokens = max_tokens
    request.sampling.temperature = 0.0
    return request


async def test_a_full_inference_queue_says_inference_queue_full(one_slot_inference: ServiceProcess) -> None:
    async with open_channel(one_slot_inference.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        held = stub.Generate(_generate("Once upon a time", 4096), timeout=120)
        try:
            assert (await held.read()).HasField("delta"), "the first generation holds the only row"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                [m async for m in stub.Generate(_generate("One too many", 4), timeout=30)]
        finally:
            held.cancel()
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    info = error_info(error)
    assert info is not None and (info.domain, info.reason) == (DOMAIN, "INFERENCE_QUEUE_FULL")
    assert dict(info.metadata) == {"maxWaiting": "0"}
    assert retry_delay_s(error)


async def test_a_tool_error_status_says_what_its_deprecated_fields_say(tools: tools_pb2_grpc.ToolsServiceStub) -> None:
    calls = [
        common_pb2.ToolCall(call_id="bad", name="calculator", arguments_json=json.dumps({"expression": 5})),
        common_pb2.ToolCall(call_id="unknown", name="no_such_tool", arguments_json="{}"),
    ]
    stream = tools.InvokeMany(tools_pb2.InvokeManyRequest(calls=calls), timeout=30)
    errors = {m.result.call_id: m.result.error async for m in stream}
    expected = {"bad": ("INVALID_ARGUMENT", "INVALID_FIELD"), "unknown": ("NOT_FOUND", "NOT_FOUND")}
    assert set(errors) == set(expected)
    for call_id, (code, reason) in expected.items():
        error = errors[call_id]
        assert error.status.code == error.code == grpc.StatusCode[code].value[0], error
        assert error.status.message == error.message and error.message
        info = error_info_of(error.status)
        assert info is not None and (info.domain, info.reason) == (DOMAIN, reason)
    bad = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad) for detail in errors["bad"].status.details)
    violations = [(v.field, v.description) for v in bad.field_violations]
    assert violations == [(v.field, v.description) for v in errors["bad"].field_violations]
    assert violations and violations[0][0].startswith("arguments_json.expression")
