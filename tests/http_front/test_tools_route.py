"""GET /v1/genmesh/tools (gateway/http/tools_route.py) without a browser: not served without a tools service, a
tools service that is down answered in OpenAI's error shape, and the listing's JSON. A live tools service behind
it, through the page's picker, is tests/http_front/test_web_page.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import httpx
import pytest_asyncio

from gateway.http.app import build_app
from gateway.http.context import ToolsTarget
from gateway.http.tools_route import tools_json, tools_target
from genmesh.cli.launcher import free_port
from genmesh.v1 import tools_pb2


@pytest_asyncio.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    """A gateway channel the route never uses."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as unused:
        yield unused


async def _get(tools: ToolsTarget | None, channel: grpc.aio.Channel) -> httpx.Response:
    app = build_app(channel, tools=tools, static_dir=None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://front") as client:
        return await client.get("/v1/genmesh/tools")


async def test_without_a_tools_service_the_route_is_not_served(channel: grpc.aio.Channel) -> None:
    assert tools_target("") is None
    assert (await _get(None, channel)).status_code == 404


async def test_a_tools_service_that_is_down_is_a_503_in_openai_shape(channel: grpc.aio.Channel) -> None:
    response = await _get(tools_target(f"127.0.0.1:{free_port()}"), channel)
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "service_unavailable"


def test_the_listing_gives_each_schema_as_an_object_and_the_providers() -> None:
    listing = tools_pb2.ListToolsResponse(
        tools=[
            tools_pb2.ToolSpec(name="calculator", parameters_json_schema='{"type": "object"}', available=True),
            tools_pb2.ToolSpec(name="broken", parameters_json_schema="[1, 2", source="mcp:x"),
        ],
        providers=[tools_pb2.ToolProvider(name="mcp:x", tool_prefix="x__", restarts=2, last_error="exited")],
    )
    body = tools_json(listing)
    assert [(t["name"], t["parameters"], t["source"], t["available"]) for t in body["tools"]] == [
        ("calculator", {"type": "object"}, "builtin", True),
        ("broken", {}, "mcp:x", False),
    ]
    assert body["providers"] == [
        {"name": "mcp:x", "tool_prefix": "x__", "available": False, "restarts": 2, "last_error": "exited"}
    ]
