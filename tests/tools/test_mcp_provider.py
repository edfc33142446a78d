"""Tests for MCP servers as tool providers: a real MCP server (tests/tools/mcp_echo_server.py) over stdio."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from genmesh.errors import InvalidArgument, NotFound, Unavailable
from services.tools.mcp_provider import Backoff, McpProvider, McpServerConfig, parse_mcp_server
from services.tools.registry import default_registry
from services.tools.tool import ToolFailed

SERVER = Path(__file__).with_name("mcp_echo_server.py")


def test_server_specs_parse() -> None:
    config = parse_mcp_server("files=python -m files_server --root '/tmp/a b'")
    assert config.name == "files" and config.command == ("python", "-m", "files_server", "--root", "/tmp/a b")
    for bad in ["no-equals", "=cmd", "bad name=cmd", "a__b=cmd", "x="]:
        with pytest.raises(ValueError):
            parse_mcp_server(bad)
    assert Backoff(0.5, 4.0).delay(1) == 0.5 and Backoff(0.5, 4.0).delay(3) == 2.0 and Backoff(0.5, 4.0).delay(9) == 4.0


async def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def test_mcp_tools_are_listed_invoked_and_the_server_is_restarted_when_it_dies() -> None:
    provider = McpProvider(
        McpServerConfig("echo", (sys.executable, str(SERVER))), backoff=Backoff(initial_s=0.1), tool_timeout_s=5.0
    )
    with default_registry(max_workers=1) as registry:
        registry.add_provider(provider)
        await provider.start()
        try:
            assert await provider.wait_first_attempt(60), provider.last_error
            tools = {t.name: t for t in registry.tools() if t.source == "mcp:echo"}
            assert set(tools) == {"echo__echo", "echo__add", "echo__slow", "echo__whoami", "echo__fail", "echo__crash"}
            assert tools["echo__echo"].idempotent and tools["echo__add"].idempotent, "from the annotations"
            assert not tools["echo__slow"].idempotent
            assert tools["echo__echo"].parameters["required"] == ["text"]

            echoed = await registry.invoke("echo__echo", '{"text": "ab", "times": 2}')
            assert json.loads(echoed.result_json) == {"result": "abab"}
            assert json.loads((await registry.invoke("echo__add", '{"a": 1, "b": 2.5}')).result_json) == {"sum": 3.5}
            with pytest.raises(InvalidArgument) as caught:
                await registry.invoke("echo__echo", '{"text": 1}')
            assert [v.field for v in caught.value.violations] == ["arguments.text"]
            with pytest.raises(ToolFailed, match="no luck"):
                await registry.invoke("echo__fail", '{"reason": "no luck"}')
            with pytest.raises(NotFound):
                await registry.invoke("echo__nope", "{}")
            first_pid = json.loads((await registry.invoke("echo__whoami", "")).result_json)["pid"]

            with pytest.raises(Unavailable):
                await registry.invoke("echo__crash", "{}")
            assert not provider.available
            with pytest.raises(Unavailable):
                await registry.invoke("echo__echo", '{"text": "x"}')
            assert "echo__echo" in {t.name for t in registry.tools()}, "its tools stay listed while it is down"

            await _until(lambda: provider.available)
            assert provider.available and provider.restarts == 1
            second_pid = json.loads((await registry.invoke("echo__whoami", "")).result_json)["pid"]
            assert second_pid != first_pid, "a new server process"
        finally:
            await provider.stop()
        assert not provider.available


async def test_a_server_that_cannot_start_is_reported_and_retried() -> None:
    provider = McpProvider(
        McpServerConfig("ghost", (sys.executable, "-c", "import sys; sys.exit(7)")),
        backoff=Backoff(initial_s=0.05, max_s=0.1),
        connect_timeout_s=10.0,
    )
    with default_registry(max_workers=1) as registry:
        registry.add_provider(provider)
        await provider.start()
        try:
            assert not await provider.wait_first_attempt(30)
            assert provider.last_error
            with pytest.raises(Unavailable, match="ghost"):
                registry.get("ghost__anything")
            await _until(lambda: provider.restarts >= 2, 30)
            assert provider.restarts >= 2, "restarted with backoff"
        finally:
            await provider.stop()
