"""`genmesh tools list`: the tools the tools service runs, each with its arguments (name, type, whether required,
description, allowed values) and an example `--tool` flag for `genmesh ask`.

It asks the tools service's ListTools (default port 50053): the gateway does not proxy ListTools, and its
MeshService (`genmesh status`) reports only the tools' names, not their arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import grpc
from google.protobuf import json_format

from genmesh import mesh
from genmesh.channels import open_channel
from genmesh.cli.client_flags import add_client_tls_flags, client_tls
from genmesh.cli.rpc_errors import describe_rpc_error
from genmesh.v1 import tools_pb2, tools_pb2_grpc

MAX_CHOICES = 10
"""Allowed values shown for an argument; the rest are counted."""


def add_tools_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `genmesh tools list`."""
    tools = commands.add_parser("tools", help="the tools the mesh runs: genmesh tools list")
    verbs = tools.add_subparsers(dest="verb", required=True)
    listing = verbs.add_parser(
        "list",
        help="each tool with its arguments and an example --tool flag",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listing.add_argument(
        "--target",
        default=f"127.0.0.1:{mesh.TOOLS.default_port}",
        help="the tools service, HOST:PORT (default: %(default)s)",
    )
    listing.add_argument("--json", action="store_true", help="print the tools and MCP servers as JSON")
    listing.add_argument("--timeout", type=float, default=10.0, dest="timeout_s", help="seconds (default: 10)")
    add_client_tls_flags(listing)


def run_tools(args: argparse.Namespace, out: TextIO = sys.stdout) -> int | str:
    """Run `genmesh tools list`: 0 once listed, else the message to exit with."""
    try:
        response = asyncio.run(fetch_tools(args.target, args))
    except grpc.aio.AioRpcError as error:
        return describe_rpc_error(error, args.target, "tools service")
    if args.json:
        print(json_format.MessageToJson(response, always_print_fields_with_no_presence=True), file=out)
    else:
        print(render_tools(response.tools, response.providers), file=out)
    return 0


async def fetch_tools(target: str, args: argparse.Namespace) -> tools_pb2.ListToolsResponse:
    """Every page of ListTools, as one response."""
    whole = tools_pb2.ListToolsResponse()
    async with open_channel(target, tls=client_tls(args)) as channel:
        stub = tools_pb2_grpc.ToolsServiceStub(channel)
        token = ""
        while True:
            page = await stub.ListTools(tools_pb2.ListToolsRequest(page_token=token), timeout=args.timeout_s)
            whole.tools.extend(page.tools)
            whole.providers.extend(page.providers)
            token = page.next_page_token
            if not token:
                return whole


def _type_of(schema: dict[str, Any]) -> str:
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        kind = " or ".join(str(k) for k in kind)
    if kind == "array" and isinstance(schema.get("items"), dict):
        kind = f"array of {_type_of(schema['items'])}"
    return str(kind)


def _example_value(schema: dict[str, Any]) -> Any:
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    kind = _type_of(schema).split(" ")[0]
    return {"number": 1, "integer": 1, "boolean": True, "array": [], "object": {}, "null": None}.get(kind, "...")


def argument_lines(schema: dict[str, Any]) -> list[str]:
    """One line per argument of an object schema: name, type, required or optional, description, choices."""
    properties: dict[str, Any] = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    if not properties:
        return ["    (no arguments)"]
    width = max(len(name) for name in properties)
    lines = []
    for name, spec in properties.items():
        spec = spec if isinstance(spec, dict) else {}
        need = "required" if name in required else "optional"
        text = spec.get("description", "")
        if spec.get("enum"):
            values = [str(v) for v in spec["enum"]]
            shown = ", ".join(values[:MAX_CHOICES]) + (
                f", … ({len(values)} in all)" if len(values) > MAX_CHOICES else ""
            )
            text = f"{text} One of: {shown}.".strip()
        if "default" in spec:
            text = f"{text} Default: {json.dumps(spec['default'])}.".strip()
        lines.append(f"    {name:<{width}}  {_type_of(spec)}, {need}  {text}".rstrip())
    return lines


def example_flag(tool: tools_pb2.ToolSpec, schema: dict[str, Any]) -> str:
    """``--tool 'NAME:{...}'`` with a value for each required argument."""
    properties: dict[str, Any] = schema.get("properties") or {}
    arguments = {
        name: _example_value(spec if isinstance(spec, dict) else {})
        for name, spec in properties.items()
        if name in (schema.get("required") or ())
    }
    return f"--tool '{tool.name}:{json.dumps(arguments)}'"


def render_tools(tools: Sequence[tools_pb2.ToolSpec], providers: Sequence[tools_pb2.ToolProvider] = ()) -> str:
    """The text `genmesh tools list` prints."""
    blocks = []
    for tool in tools:
        try:
            schema = json.loads(tool.parameters_json_schema or "{}")
        except json.JSONDecodeError:
            schema = {}
        schema = schema if isinstance(schema, dict) else {}
        traits = [tool.source or "builtin", "idempotent" if tool.idempotent else "not idempotent"]
        if tool.timeout_ms:
            traits.append(f"timeout {tool.timeout_ms} ms")
        if not tool.available:
            traits.append("UNAVAILABLE: its MCP server is down")
        lines = [f"{tool.name}  ({', '.join(traits)})"]
        if tool.description:
            lines.append(f"  {tool.description}")
        lines += ["  arguments:", *argument_lines(schema), f"  example: {example_flag(tool, schema)}"]
        blocks.append("\n".join(lines))
    if not tools:
        blocks.append("no tools")
    for provider in providers:
        state = "up" if provider.available else f"down ({provider.last_error or 'no error recorded'})"
        blocks.append(
            f"MCP server {provider.name} (tools {provider.tool_prefix}*): {state}, {provider.restarts} restarts"
        )
    return "\n\n".join(blocks)
