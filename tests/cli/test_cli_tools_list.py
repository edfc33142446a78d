"""`genmesh tools list` against a real tools service (the built-in tools, served in-process by the real bootstrap):
every tool with its arguments' names, types and descriptions, and an example --tool flag that `genmesh ask` takes."""

from __future__ import annotations

import json
import re

from support.genmesh_cli import genmesh
from support.served import Hosted, served

from genmesh import mesh
from genmesh.cli.ask import parse_tool
from genmesh.v1 import tools_pb2_grpc
from services.tools.registry import default_registry
from services.tools.server import ToolsServicer


def tools_service() -> Hosted:
    servicer = ToolsServicer(default_registry())
    return Hosted(
        mesh.TOOLS.grpc_service, lambda server: tools_pb2_grpc.add_ToolsServiceServicer_to_server(servicer, server)
    )


async def test_tools_list_shows_each_tool_s_arguments_and_an_example() -> None:
    async with served(tools_service(), metrics=False) as where:
        text, as_json = (
            await genmesh("tools", "list", "--target", where.address),
            await genmesh("tools", "list", "--target", where.address, "--json"),
        )
    assert text.returncode == 0, text.stderr
    blocks = {block.split()[0]: block for block in text.stdout.strip().split("\n\n")}
    assert set(blocks) == {"calculator", "clock", "unit_convert", "text_stats"}
    unit = blocks["unit_convert"]
    assert unit.startswith("unit_convert  (builtin, idempotent, timeout 1000 ms)")
    assert "Convert a value between units" in unit
    assert re.search(r"^    value +number, required +The quantity to convert\.$", unit, re.MULTILINE), unit
    assert re.search(r"^    from_unit +string, required +Unit of value, e\.g\. km, lb, C, MiB\. One of: .+ in all\)\.$",
                     unit, re.MULTILINE), unit  # fmt: skip
    example = re.search(r"^  example: --tool '(.+)'$", unit, re.MULTILINE)
    assert example, unit
    name, arguments = parse_tool(example.group(1))
    assert name == "unit_convert" and set(json.loads(arguments)) == {"value", "from_unit", "to_unit"}

    assert as_json.returncode == 0, as_json.stderr
    listed = json.loads(as_json.stdout)
    assert sorted(t["name"] for t in listed["tools"]) == sorted(blocks)
    assert all(json.loads(t["parametersJsonSchema"])["type"] == "object" for t in listed["tools"])


async def test_tools_list_without_a_tools_service_says_where_it_looked() -> None:
    from genmesh.cli.launcher import free_ports

    (port,) = free_ports(1)
    ran = await genmesh("tools", "list", "--target", f"127.0.0.1:{port}")
    assert ran.returncode == 1 and ran.stdout == ""
    assert ran.stderr.startswith("error: UNAVAILABLE: ")
    assert f"nothing answered at 127.0.0.1:{port}: is the mesh up" in ran.stderr
    assert "give the tools service's address with --target HOST:PORT" in ran.stderr
