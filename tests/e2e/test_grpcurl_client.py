"""A client in another language (grpcurl, Go) discovers the gateway by reflection and streams an answer."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from genmesh.cli.launcher import Mesh

GRPCURL = Path(sys.executable).parent / "grpcurl"


async def _grpcurl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        str(GRPCURL), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_reflection_lists_the_public_api(mesh: Mesh) -> None:
    services = (await _grpcurl("-plaintext", mesh.address("gateway"), "list")).split()
    assert "genmesh.v1.GatewayService" in services
    assert "grpc.health.v1.Health" in services
    described = await _grpcurl("-plaintext", mesh.address("gateway"), "describe", "genmesh.v1.GatewayService")
    assert "rpc Generate ( .genmesh.v1.GatewayRequest ) returns ( stream .genmesh.v1.GatewayEvent )" in described


async def test_grpcurl_streams_an_answer(mesh: Mesh) -> None:
    request = {
        "question": "What is a decorator?",
        "toolCalls": [{"name": "calculator", "argumentsJson": '{"expression": "3*3"}'}],
        "sampling": {"maxTokens": 8, "temperature": 0},
    }
    out = await _grpcurl(
        "-plaintext", "-d", json.dumps(request), mesh.address("gateway"), "genmesh.v1.GatewayService/Generate"
    )
    decoder = json.JSONDecoder()
    events, position = [], 0
    while position < len(out.strip()):
        event, end = decoder.raw_decode(out, position)
        events.append(event)
        position = end
        while position < len(out) and out[position].isspace():
            position += 1
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] in ("sources", "tool_result") and kinds[-1] == "complete"
    assert "delta" in kinds
    assert json.loads(next(e["tool_result"]["result_json"] for e in events if "tool_result" in e))["value"] == 9
