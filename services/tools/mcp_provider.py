"""MCP servers as tool providers: each configured server runs as a child process over stdio (official ``mcp``
SDK), its tools are served as ``<server>__<tool>``, and a supervisor restarts it with backoff when it dies.

While a server is down its last-listed tools stay listed (marked unavailable) and invoking one gives
Unavailable; a tool of a server that never came up is Unavailable too, never NotFound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mcp import Client, MCPError, StdioServerParameters
from mcp.types import CallToolResult, Implementation
from mcp.types import Tool as McpTool
from mcp_types.jsonrpc import CONNECTION_CLOSED

from genmesh.errors import InvalidArgument, Unavailable, quote
from genmesh.schema import check_schema
from genmesh.tasks import cancel_and_wait
from services.tools.tool import DEFAULT_TOOL_TIMEOUT_S, MAX_ERROR_CHARS, Tool, ToolFailed

log = logging.getLogger("genmesh.tools")

SEPARATOR = "__"
"""Between a server's name and its tool's: ``files__read``. Dots are not allowed in OpenAI-style names."""
_SERVER_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,30})")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
MAX_TOOL_NAME_CHARS = 64


@dataclass(frozen=True, slots=True)
class McpServerConfig:
    """How to run one MCP server: ``name`` (``[A-Za-z0-9-]``, at most 31 characters) and its command line."""

    name: str
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _SERVER_NAME.fullmatch(self.name):
            raise ValueError(f"MCP server name {self.name!r} must be 1-31 characters of [A-Za-z0-9-]")
        if not self.command or not self.command[0]:
            raise ValueError(f"MCP server {self.name!r} needs a command")


def parse_mcp_server(text: str) -> McpServerConfig:
    """``NAME=COMMAND [ARGS...]`` (shell-quoted) as a config; raises ValueError naming the problem."""
    name, sep, command = text.partition("=")
    if not sep:
        raise ValueError(f"MCP server {text!r} must look like NAME=COMMAND [ARGS...]")
    try:
        words = shlex.split(command)
    except ValueError as error:
        raise ValueError(f"MCP server {name!r}: bad command line: {error}") from None
    return McpServerConfig(name.strip(), tuple(words))


@dataclass(frozen=True, slots=True)
class Backoff:
    """Restart delays: ``initial_s`` doubling up to ``max_s``; reset after ``stable_s`` of healthy running."""

    initial_s: float = 0.5
    max_s: float = 30.0
    stable_s: float = 30.0

    def delay(self, failures: int) -> float:
        """The wait before restart number ``failures`` (1-based) of a row."""
        return float(min(self.max_s, self.initial_s * 2 ** max(0, failures - 1)))


class McpProvider:
    """One MCP server as a tool provider (``services.tools.registry.ToolProvider``).

    ``start()`` launches the supervisor, ``stop()`` ends it and the server process.
    """

    def __init__(
        self,
        config: McpServerConfig,
        *,
        tool_timeout_s: float = DEFAULT_TOOL_TIMEOUT_S,
        backoff: Backoff | None = None,
        ping_interval_s: float = 1.0,
        connect_timeout_s: float = 30.0,
    ) -> None:
        self.config = config
        self.tool_timeout_s = tool_timeout_s
        self.backoff = backoff or Backoff()
        self.ping_interval_s = ping_interval_s
        self.connect_timeout_s = connect_timeout_s
        self.restarts = 0
        self.last_error = ""
        self._client: Client | None = None
        self._tools: dict[str, Tool] = {}
        self._originals: dict[str, str] = {}
        self._listed: list[dict[str, Any]] = []
        self._broken = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._restarted: Callable[[str], None] | None = None

    @property
    def name(self) -> str:
        return f"mcp:{self.config.name}"

    @property
    def prefix(self) -> str:
        return f"{self.config.name}{SEPARATOR}"

    @property
    def available(self) -> bool:
        return self._client is not None

    def tools(self) -> list[Tool]:
        return list(self._tools.values())

    def lookup(self, name: str) -> Tool | None:
        tool = self._tools.get(name)
        if tool is None and not self._tools and not self.available:
            raise Unavailable(f"tool {quote(name)}: MCP server {self.config.name!r} is not running ({self.last_error})")
        return tool

    async def start(self, restarted: Callable[[str], None] | None = None) -> None:
        """Start the supervisor (it connects, lists the tools, then watches the server); it calls ``restarted``
        with the server's name each time it starts the server again."""
        self._restarted = restarted
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name=f"mcp-{self.config.name}")

    async def wait_first_attempt(self, timeout_s: float) -> bool:
        """Wait until the first connection succeeded or failed; True if the server is up."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._first_attempt.wait()
        return self.available

    async def stop(self) -> None:
        """Stop supervising and end the server process."""
        await cancel_and_wait(self._supervisor)
        self._supervisor = None

    async def _supervise(self) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            try:
                await self._run_once()
                reason = "the server closed the connection"
            except asyncio.CancelledError:
                raise
            except Exception as error:
                reason = _describe(error)
            finally:
                self._client = None
                self._first_attempt.set()
            self.last_error = reason[:MAX_ERROR_CHARS]
            failures = 1 if time.monotonic() - started >= self.backoff.stable_s else failures + 1
            delay = self.backoff.delay(failures)
            log.warning(
                "MCP server down; restarting",
                extra={"server": self.config.name, "error": self.last_error, "retry_in_s": delay},
            )
            await asyncio.sleep(delay)
            self.restarts += 1
            if self._restarted is not None:
                self._restarted(self.config.name)

    async def _run_once(self) -> None:
        """One life of the server: connect, list, serve until it dies (or the supervisor is cancelled)."""
        params = StdioServerParameters(
            command=self.config.command[0], args=list(self.config.command[1:]), env=dict(self.config.env) or None
        )
        client = Client(params, cache=None, client_info=Implementation(name="genmesh-tools", version="0.1.0"))
        async with asyncio.timeout(self.connect_timeout_s):
            await client.__aenter__()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                listed = await self._list(client)
            self._install(listed)
            self._broken.clear()
            self._client = client
            self.last_error = ""
            self._first_attempt.set()
            log.info("MCP server ready", extra={"server": self.config.name, "tools": len(self._tools)})
            await self._watch(client)
        finally:
            self._client = None
            await client.__aexit__(None, None, None)

    @staticmethod
    async def _list(client: Client) -> list[McpTool]:
        tools: list[McpTool] = []
        cursor: str | None = None
        for _ in range(100):
            page = await client.list_tools(cursor=cursor, cache_mode="refresh")
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        return tools

    async def _watch(self, client: Client) -> None:
        """Return when the server stops answering or a call saw the connection close.

        Every ``ping_interval_s`` the tools are listed again: that is the liveness probe (``ping`` is gone
        from the 2026-07-28 protocol) and it picks up a changed tool list too.
        """
        while not self._broken.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.ping_interval_s):
                    await self._broken.wait()
            if self._broken.is_set():
                return
            async with asyncio.timeout(max(5.0, self.ping_interval_s)):
                listed = await self._list(client)
            if [t.model_dump() for t in listed] != self._listed:
                self._install(listed)
                log.info("MCP tools changed", extra={"server": self.config.name, "tools": len(self._tools)})

    def _install(self, listed: list[McpTool]) -> None:
        tools: dict[str, Tool] = {}
        originals: dict[str, str] = {}
        for mcp_tool in listed:
            exposed = self.prefix + _UNSAFE.sub("_", mcp_tool.name)
            if len(exposed) > MAX_TOOL_NAME_CHARS or exposed in tools:
                log.warning("skipping MCP tool", extra={"server": self.config.name, "tool": mcp_tool.name})
                continue
            try:
                check_schema(mcp_tool.input_schema)
            except InvalidArgument as error:
                log.warning(
                    "skipping MCP tool with a bad schema",
                    extra={"server": self.config.name, "tool": mcp_tool.name, "error": error.message},
                )
                continue
            hints = mcp_tool.annotations
            idempotent = bool(hints and (hints.idempotent_hint or hints.read_only_hint))
            tools[exposed] = Tool(
                name=exposed,
                description=mcp_tool.description or (hints.title if hints and hints.title else "") or mcp_tool.name,
                parameters=dict(mcp_tool.input_schema),
                handler=self._handler(exposed, mcp_tool.name),
                timeout_s=self.tool_timeout_s,
                idempotent=idempotent,
                source=self.name,
            )
            originals[exposed] = mcp_tool.name
        self._tools, self._originals = tools, originals
        self._listed = [t.model_dump() for t in listed]

    def _handler(self, exposed: str, original: str) -> Any:
        async def call(arguments: dict[str, Any]) -> Any:
            client = self._client
            if client is None:
                raise Unavailable(f"tool {exposed!r}: MCP server {self.config.name!r} is down ({self.last_error})")
            try:
                result = await client.call_tool(original, arguments)
            except MCPError as error:
                if error.code == CONNECTION_CLOSED:
                    if self._client is client:
                        self._client = None  # unavailable from now on, not only once the supervisor notices
                    self._broken.set()
                    raise Unavailable(f"tool {exposed!r}: MCP server {self.config.name!r} went away") from None
                raise ToolFailed(
                    exposed, f"tool {exposed!r}: MCP error {error.code}: {error.message}"[:MAX_ERROR_CHARS]
                ) from None
            return _result_value(exposed, result)

        return call


def _result_value(exposed: str, result: CallToolResult) -> Any:
    """A tool result as JSON: its structured content, else its one text block (parsed if it is JSON), else
    its content blocks."""
    blocks = result.content
    if result.is_error:
        text = " ".join(getattr(block, "text", "") for block in blocks).strip() or "the tool reported an error"
        raise ToolFailed(exposed, f"tool {exposed!r} failed: {text}"[:MAX_ERROR_CHARS], "McpToolError")
    if result.structured_content is not None:
        return result.structured_content
    if len(blocks) == 1 and blocks[0].type == "text":
        text = blocks[0].text
        try:
            return json.loads(text)
        except ValueError:
            return text
    return [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in blocks]


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out connecting or listing tools"
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in error.exceptions)
    return f"{type(error).__name__}: {error}"
