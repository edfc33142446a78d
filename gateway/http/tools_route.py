"""``GET /v1/genmesh/tools``: the tools the mesh runs, with their argument schemas, for the web page's picker.

The gateway does not proxy ListTools, so this route asks the tools service directly, at the context's ``tools``
(``genmesh serve http --tools HOST:PORT``); without one the route is not served (404) and the
page hides its picker. The answer is ``{"tools": [{name, description, parameters (the JSON Schema as an object),
timeout_ms, idempotent, source, available}], "providers": [{name, tool_prefix, available, restarts,
last_error}]}``, every page of ListTools in one; a failed call is answered in OpenAI's error shape."""

from __future__ import annotations

import json
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.http.context import HttpContext, ToolsTarget
from gateway.http.errors import http_error
from genmesh.channels import open_channel
from genmesh.tls import ClientTLS
from genmesh.v1 import tools_pb2, tools_pb2_grpc

LIST_TIMEOUT_S = 10.0
MAX_PAGES = 100
"""Pages followed at most (a page holds up to 1000 tools)."""


def parameters_of(tool: tools_pb2.ToolSpec) -> dict[str, Any]:
    """The tool's argument schema as an object; an empty object schema when it is missing or not an object."""
    try:
        schema = json.loads(tool.parameters_json_schema or "{}")
    except json.JSONDecodeError:
        schema = {}
    return schema if isinstance(schema, dict) else {}


def tools_json(response: tools_pb2.ListToolsResponse) -> dict[str, Any]:
    """The route's answer for a whole ListTools response."""
    tools = [
        {
            "name": tool.name,
            "description": tool.description,
            "parameters": parameters_of(tool),
            "timeout_ms": tool.timeout_ms,
            "idempotent": tool.idempotent,
            "source": tool.source or "builtin",
            "available": tool.available,
        }
        for tool in response.tools
    ]
    providers = [
        {
            "name": provider.name,
            "tool_prefix": provider.tool_prefix,
            "available": provider.available,
            "restarts": provider.restarts,
            "last_error": provider.last_error,
        }
        for provider in response.providers
    ]
    return {"tools": tools, "providers": providers}


def tools_target(target: str, ca: str = "", cert: str = "", key: str = "") -> ToolsTarget | None:
    """build_app's ``tools`` serving this route for the tools service at ``target`` (None when empty), reached
    with the TLS files given (plaintext when none)."""
    return ToolsTarget(target, ca, cert, key) if target else None


async def list_tools(target: str, tls: ClientTLS | None = None) -> tools_pb2.ListToolsResponse:
    """Every page of ListTools of the tools service at ``target``, as one response (a channel per listing: the
    page asks once per load)."""
    whole = tools_pb2.ListToolsResponse()
    async with open_channel(target, tls=tls) as channel:
        stub = tools_pb2_grpc.ToolsServiceStub(channel)
        token = ""
        for _ in range(MAX_PAGES):
            page = await stub.ListTools(tools_pb2.ListToolsRequest(page_token=token), timeout=LIST_TIMEOUT_S)
            whole.tools.extend(page.tools)
            whole.providers.extend(page.providers)
            token = page.next_page_token
            if not token:
                break
    return whole


def routes(ctx: HttpContext) -> list[BaseRoute]:
    """The tools route when ``ctx.tools`` names the tools service, else none."""
    if ctx.tools is None:
        return []
    target = ctx.tools.address
    tls = ClientTLS.from_flags(ctx.tools.ca, ctx.tools.cert, ctx.tools.key)

    async def tools(request: Request) -> Response:
        try:
            response = await list_tools(target, tls)
        except grpc.aio.AioRpcError as error:
            return http_error(error).response()
        return JSONResponse(tools_json(response))

    return [Route("/v1/genmesh/tools", tools, methods=["GET"])]
