"""ListTools pages through real gRPC: one page may hold every tool, pages stay under a default client's 4 MiB
receive limit even when the schemas are huge, page_size bounds a page, providers come on the first page only,
and a bad page_size or page_token is INVALID_ARGUMENT naming it."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from genmesh import mesh as topology
from genmesh.cli.launcher import ServiceProcess, free_port, start_service, wait_ready
from genmesh.status import error_info, field_violations
from genmesh.v1 import tools_pb2, tools_pb2_grpc

HERE = Path(__file__).resolve().parent
MCP_ECHO = HERE.parent / "tools" / "mcp_echo_server.py"
DEFAULT_RECEIVE_LIMIT = 4 * 1024 * 1024  # grpc-go's, grpc-java's and this test channel's


@pytest_asyncio.fixture(scope="module")
async def big_tools(log_root: Path) -> AsyncIterator[ServiceProcess]:
    """A tools service serving ten tools of about 1 MiB each (and an MCP server, so that there is a provider)."""
    port = free_port()
    args = ["serve", "tools", "--port", str(port), "--retrieval-target", "", "--plugin-entry-points", "false"]
    args += ["--tools-module", "big_tools:make_tools"]
    args += ["--mcp-server", f"echo={shlex.quote(sys.executable)} {shlex.quote(str(MCP_ECHO))}"]
    paths = [str(HERE / "plugins"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {"PYTHONPATH": os.pathsep.join(paths)}
    service = await start_service(topology.TOOLS, args, f"127.0.0.1:{port}", log_root / "contract-tools", env)
    try:
        await wait_ready(service, 120)
        yield service
    finally:
        service.process.terminate()
        await service.process.wait()


@pytest_asyncio.fixture
async def stub(big_tools: ServiceProcess) -> AsyncIterator[tools_pb2_grpc.ToolsServiceStub]:
    async with grpc.aio.insecure_channel(big_tools.address) as channel:  # gRPC's default options: 4 MiB in
        yield tools_pb2_grpc.ToolsServiceStub(channel)


async def _pages(stub: tools_pb2_grpc.ToolsServiceStub, page_size: int = 0) -> list[tools_pb2.ListToolsResponse]:
    pages: list[tools_pb2.ListToolsResponse] = []
    token = ""
    while True:
        page = await stub.ListTools(tools_pb2.ListToolsRequest(page_size=page_size, page_token=token), timeout=30)
        pages.append(page)
        token = page.next_page_token
        if not token:
            return pages
        assert len(pages) < 50, "paging must end"


def _names(pages: list[tools_pb2.ListToolsResponse]) -> list[str]:
    return [tool.name for page in pages for tool in page.tools]


async def test_one_page_may_hold_every_tool(tools: tools_pb2_grpc.ToolsServiceStub) -> None:
    page = await tools.ListTools(tools_pb2.ListToolsRequest(), timeout=10)
    names = [tool.name for tool in page.tools]
    assert not page.next_page_token and "calculator" in names and names == sorted(names)


async def test_pages_of_huge_schemas_fit_a_default_receive_limit(stub: tools_pb2_grpc.ToolsServiceStub) -> None:
    pages = await _pages(stub)
    names = _names(pages)
    assert len(pages) >= 3, [len(page.tools) for page in pages]
    assert all(page.ByteSize() < DEFAULT_RECEIVE_LIMIT for page in pages)
    assert names == sorted(set(names)), "by name, each tool once"
    assert {f"big_{i:02d}" for i in range(10)} | {"calculator", "echo__echo"} <= set(names)
    assert [p.name for p in pages[0].providers] == ["mcp:echo"], "providers come on the first page"
    assert all(not page.providers for page in pages[1:]), "and only there"

    small = await _pages(stub, page_size=3)
    assert all(len(page.tools) <= 3 for page in small) and _names(small) == names
    assert max(len(page.tools) for page in small) == 3


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (tools_pb2.ListToolsRequest(page_size=-1), "page_size"),
        (tools_pb2.ListToolsRequest(page_size=1001), "page_size"),
        (tools_pb2.ListToolsRequest(page_token="not-a-token"), "page_token"),
    ],
    ids=["negative-size", "size-over-1000", "foreign-token"],
)
async def test_bad_paging_fields_are_invalid_argument(
    stub: tools_pb2_grpc.ToolsServiceStub, request_: tools_pb2.ListToolsRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListTools(request_, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(caught.value)] == [field]
    info = error_info(caught.value)
    assert info is not None and (info.domain, info.reason) == ("genmesh.dev", "INVALID_FIELD")
