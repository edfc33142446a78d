"""A small MCP server for the tests, on the official SDK's server API, spoken to over stdio.

Tools: ``echo`` (idempotent), ``add``, ``slow`` (sleeps), ``fail`` (reports a tool error) and ``crash``
(the process exits at once, to exercise the provider's restarts). Its pid is in every ``whoami`` answer.
"""

from __future__ import annotations

import asyncio
import os

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

server = MCPServer("echo", log_level="WARNING")


@server.tool(annotations=ToolAnnotations(idempotent_hint=True))
def echo(text: str, times: int = 1) -> str:
    """Repeat a text."""
    return text * times


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def add(a: float, b: float) -> dict[str, float]:
    """Add two numbers."""
    return {"sum": a + b}


@server.tool()
async def slow(ms: int) -> dict[str, int]:
    """Sleep for ms milliseconds."""
    await asyncio.sleep(ms / 1000)
    return {"slept_ms": ms}


@server.tool()
def whoami() -> dict[str, int]:
    """The server's process id."""
    return {"pid": os.getpid()}


@server.tool()
def fail(reason: str) -> str:
    """Always fails with reason."""
    raise ToolError(reason)


@server.tool()
def crash() -> str:
    """Exit the server process at once."""
    os._exit(3)


if __name__ == "__main__":
    server.run()
