"""The tool registry: named, JSON-Schema-described tools invoked with validation, timeouts and isolation."""

from __future__ import annotations

import asyncio
import builtins
import contextvars
import inspect
import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from genmesh.errors import DeadlineExceeded, GenmeshError, InvalidArgument, NotFound, Unavailable
from genmesh.schema import check_schema, validate_arguments

ToolHandler = Callable[[dict[str, Any]], Awaitable[Any]] | Callable[[dict[str, Any]], Any]
"""Takes the validated arguments; returns a JSON-serialisable value (or an awaitable of one)."""

DEFAULT_TOOL_TIMEOUT_S = 10.0
DEFAULT_MAX_WORKERS = 4
MAX_RESULT_BYTES = 1024 * 1024
"""Largest JSON result a tool may return, in UTF-8 bytes."""
MAX_ERROR_CHARS = 500
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ToolFailed(GenmeshError):
    """A tool's handler raised an unexpected exception (not a genmesh error) or returned an unusable value.

    The request was valid and the tool exists, but the tool could not complete; the transport layer maps
    this to FAILED_PRECONDITION/ABORTED (never INTERNAL), with ``error_type`` as a detail.
    """

    def __init__(self, tool: str, message: str, error_type: str = "") -> None:
        super().__init__(message)
        self.tool = tool
        self.error_type = error_type


@dataclass(slots=True)
class Tool:
    """A callable tool in the OpenAI function-calling shape.

    ``parameters`` is a JSON Schema (``{"type": "object", "properties": ..., "required": [...],
    "additionalProperties": false}``). ``handler`` receives the validated arguments. It may be async (run on
    the event loop), sync with ``blocking=True`` (run in the registry's thread pool) or sync and fast with
    ``blocking=False`` (run inline on the loop, where no timeout can interrupt it). A handler reports bad
    arguments with InvalidArgument whose fields are relative to the arguments object (``expression``);
    the registry places them under the caller's prefix.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    handler: ToolHandler
    timeout_s: float = DEFAULT_TOOL_TIMEOUT_S
    idempotent: bool = False
    blocking: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _TOOL_NAME.fullmatch(self.name):
            raise ValueError(f"tool name must be 1-64 characters of [A-Za-z0-9_-], got {self.name!r}")
        if not callable(self.handler):
            raise ValueError(f"tool {self.name!r}: handler must be callable")
        if not isinstance(self.timeout_s, int | float) or not math.isfinite(self.timeout_s) or self.timeout_s <= 0:
            raise ValueError(f"tool {self.name!r}: timeout_s must be a finite number > 0, got {self.timeout_s!r}")
        if self.blocking and inspect.iscoroutinefunction(self.handler):
            raise ValueError(f"tool {self.name!r}: a blocking handler must be a plain function, not async")


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


class ToolRegistry:
    """Named tools and the bounded thread pool their blocking handlers run in; ``close()`` when done."""

    def __init__(self, max_workers: int = DEFAULT_MAX_WORKERS) -> None:
        if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1:
            raise ValueError(f"max_workers must be an integer >= 1, got {max_workers!r}")
        self.max_workers = max_workers
        self._tools: dict[str, Tool] = {}
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
        """Add ``tool``; raises ValueError for a duplicate name or an invalid parameters schema."""
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is already registered")
        try:
            check_schema(tool.parameters, field="parameters")
        except InvalidArgument as error:
            raise ValueError(f"tool {tool.name!r}: {error.message}") from None
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool:
        """The tool called ``name``; raises NotFound if there is none."""
        tool = self._tools.get(name)
        if tool is None:
            raise NotFound(f"tool {name!r} does not exist")
        return tool

    def list(self) -> builtins.list[Tool]:
        """All tools in registration order."""
        return builtins.list(self._tools.values())

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
        started = time.monotonic()
        timer = asyncio.timeout(budget)
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
    """A registry holding the built-in tools: ``calculator`` and ``clock``."""
    # The built-ins import Tool from this module, so they are imported here rather than at the top.
    from services.tools.calculator import calculator_tool
    from services.tools.clock import clock_tool

    registry = ToolRegistry(max_workers=max_workers)
    registry.register(calculator_tool())
    registry.register(clock_tool())
    return registry
