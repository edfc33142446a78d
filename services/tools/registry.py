"""The tool registry: named, JSON-Schema-described tools invoked with validation, timeouts and isolation."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from genmesh.errors import DeadlineExceeded, GenmeshError, InvalidArgument, NotFound, Unavailable, quote
from genmesh.schema import check_schema, validate_arguments
from services.tools.builtin.calculator import calculator_tool
from services.tools.builtin.clock import clock_tool
from services.tools.builtin.text_stats import text_stats_tool
from services.tools.builtin.unit_convert import unit_convert_tool
from services.tools.tool import MAX_ERROR_CHARS, Tool, ToolFailed, call_deadline

DEFAULT_MAX_WORKERS = 4
MAX_RESULT_BYTES = 1024 * 1024
"""Largest JSON result a tool may return, in UTF-8 bytes."""


@dataclass(frozen=True, slots=True)
class InvocationResult:
    """What one invocation produced: the result as JSON text and when it ran (``time.monotonic`` seconds)."""

    tool: str
    result_json: str
    started: float
    finished: float
    duration_ms: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "duration_ms", (self.finished - self.started) * 1000.0)


class ToolProvider(Protocol):
    """A source of tools that come and go at run time (an MCP server): its tools share ``prefix``."""

    @property
    def name(self) -> str:
        """``mcp:<server>``."""

    @property
    def prefix(self) -> str:
        """What the names of its tools start with (``<server>__``)."""

    @property
    def available(self) -> bool:
        """Whether its tools can be invoked now."""

    @property
    def restarts(self) -> int:
        """How many times it was started again after it failed."""

    @property
    def last_error(self) -> str:
        """Its last failure, empty when none."""

    def tools(self) -> list[Tool]:
        """Its tools as last listed (kept while it is down, so that their schemas stay known)."""

    def lookup(self, name: str) -> Tool | None:
        """Its tool called ``name`` (which starts with ``prefix``); None if unknown.

        Raises Unavailable when the provider is down and has no tool list yet (it never came up).
        """


class ToolRegistry:
    """Named tools and the bounded thread pool their blocking handlers run in; ``close()`` when done.

    Tools are registered once (built-ins, plugins) or come from providers whose tools change at run time.
    """

    def __init__(self, max_workers: int = DEFAULT_MAX_WORKERS) -> None:
        if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1:
            raise ValueError(f"max_workers must be an integer >= 1, got {max_workers!r}")
        self.max_workers = max_workers
        self._tools: dict[str, Tool] = {}
        self._providers: list[ToolProvider] = []
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="genmesh-tool")
        self._closed = False

    def __enter__(self) -> ToolRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def register(self, tool: Tool) -> None:
        """Add ``tool``; raises ValueError for a duplicate name, a provider's prefix or an invalid schema."""
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is already registered")
        owner = self._provider_of(tool.name)
        if owner is not None:
            raise ValueError(f"tool {tool.name!r} is in the namespace of {owner.name} ({owner.prefix}*)")
        try:
            check_schema(tool.parameters, field="parameters")
        except InvalidArgument as error:
            raise ValueError(f"tool {tool.name!r}: {error.message}") from None
        self._tools[tool.name] = tool

    def add_provider(self, provider: ToolProvider) -> None:
        """Serve the tools of ``provider`` too; raises ValueError if its prefix clashes with a known name."""
        for other in self._providers:
            if provider.prefix.startswith(other.prefix) or other.prefix.startswith(provider.prefix):
                raise ValueError(f"{provider.name}: its prefix {provider.prefix!r} clashes with {other.name}")
        clash = next((name for name in self._tools if name.startswith(provider.prefix)), None)
        if clash is not None:
            raise ValueError(f"{provider.name}: tool {clash!r} is already registered under {provider.prefix!r}")
        self._providers.append(provider)

    def providers(self) -> list[ToolProvider]:
        """The providers, in the order they were added."""
        return list(self._providers)

    def _provider_of(self, name: str) -> ToolProvider | None:
        return next((p for p in self._providers if name.startswith(p.prefix)), None)

    def get(self, name: str) -> Tool:
        """The tool called ``name``; raises NotFound if there is none, Unavailable if its provider is down."""
        tool = self._tools.get(name)
        if tool is None:
            provider = self._provider_of(name)
            if provider is not None:
                tool = provider.lookup(name)
        if tool is None:
            raise NotFound(f"tool {quote(name)} does not exist")
        return tool

    def knows(self, name: str) -> bool:
        """Whether ``name`` is a registered tool or one of its provider's last-listed tools (down or not)."""
        if name in self._tools:
            return True
        provider = self._provider_of(name)
        return provider is not None and any(tool.name == name for tool in provider.tools())

    def tools(self) -> list[Tool]:
        """All tools: registered ones in registration order, then each provider's."""
        return [*self._tools.values(), *(tool for provider in self._providers for tool in provider.tools())]

    def is_available(self, tool: Tool) -> bool:
        """Whether ``tool`` can run now (False while its provider is down)."""
        provider = None if tool.name in self._tools else self._provider_of(tool.name)
        return provider is None or provider.available

    def close(self, wait: bool = True) -> None:
        """Shut the thread pool down; later invocations of blocking tools raise Unavailable."""
        self._closed = True
        self._executor.shutdown(wait=wait, cancel_futures=True)

    async def invoke(
        self, name: str, arguments_json: str, timeout_s: float | None = None, field_prefix: str = "arguments"
    ) -> InvocationResult:
        """Validate ``arguments_json`` against the tool's schema, run the tool and return its JSON result.

        The deadline is the smaller of the tool's ``timeout_s`` and the caller's. Raises NotFound (unknown
        tool), InvalidArgument with fields under ``field_prefix`` (bad arguments, from the schema or the
        handler), DeadlineExceeded naming the tool, Unavailable once closed, any other genmesh error the
        handler raises, and ToolFailed for every other failure of the handler.
        """
        tool = self.get(name)
        if timeout_s is not None and math.isnan(timeout_s):
            raise InvalidArgument.field("timeout_s", "must be a number")
        budget = tool.timeout_s if timeout_s is None else min(tool.timeout_s, timeout_s)
        if budget <= 0:
            raise DeadlineExceeded(f"tool {name!r}: no time left to run it")
        arguments = validate_arguments(tool.parameters, arguments_json, field_prefix)
        if tool.blocking and self._closed:
            raise Unavailable("the tool registry is closed")
        if not self.is_available(tool):
            raise Unavailable(f"tool {name!r} is unavailable: its provider is down")
        started = time.monotonic()
        timer = asyncio.timeout(budget)
        with call_deadline(started + budget):
            try:
                async with timer:
                    value = await self._run(tool, arguments)
            except TimeoutError as error:
                if timer.expired():
                    raise DeadlineExceeded(f"tool {name!r} did not finish within {budget:g} s") from None
                raise self._failed(tool, error) from error
            except InvalidArgument as error:
                raise error.prefixed(field_prefix) from None
            except GenmeshError:
                raise
            except Exception as error:
                raise self._failed(tool, error) from error
        finished = time.monotonic()
        return InvocationResult(tool.name, self._serialise(tool, value), started, finished)

    async def _run(self, tool: Tool, arguments: dict[str, Any]) -> Any:
        if tool.blocking:
            loop = asyncio.get_running_loop()
            context = contextvars.copy_context()
            value = await loop.run_in_executor(self._executor, context.run, tool.handler, arguments)
            if inspect.isawaitable(value):
                raise ToolFailed(tool.name, f"tool {tool.name!r}: a blocking handler returned an awaitable")
            return value
        value = tool.handler(arguments)
        if inspect.isawaitable(value):
            value = await value
        return value

    @staticmethod
    def _failed(tool: Tool, error: BaseException) -> ToolFailed:
        text = f"tool {tool.name!r} failed: {type(error).__name__}: {error}"
        if len(text) > MAX_ERROR_CHARS:
            text = text[: MAX_ERROR_CHARS - 1] + "…"
        return ToolFailed(tool.name, text, type(error).__name__)

    @staticmethod
    def _serialise(tool: Tool, value: Any) -> str:
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as error:
            raise ToolFailed(tool.name, f"tool {tool.name!r} returned a value that is not JSON: {error}") from None
        if len(text) > MAX_RESULT_BYTES or len(text.encode("utf-8")) > MAX_RESULT_BYTES:
            raise ToolFailed(tool.name, f"tool {tool.name!r} returned more than {MAX_RESULT_BYTES} bytes of JSON")
        return text


def default_registry(max_workers: int = DEFAULT_MAX_WORKERS) -> ToolRegistry:
    """A registry holding the self-contained built-in tools: ``calculator``, ``clock``, ``unit_convert``
    and ``text_stats`` (``search_docs`` needs a retrieval client; the service adds it)."""
    registry = ToolRegistry(max_workers=max_workers)
    for tool in (calculator_tool(), clock_tool(), unit_convert_tool(), text_stats_tool()):
        registry.register(tool)
    return registry
