"""The Tool type shared by the registry, the built-ins, plugins and MCP providers, and its call deadline."""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from genmesh.errors import GenmeshError

ToolHandler = Callable[[dict[str, Any]], Awaitable[Any]] | Callable[[dict[str, Any]], Any]
"""Takes the validated arguments; returns a JSON-serialisable value (or an awaitable of one)."""

DEFAULT_TOOL_TIMEOUT_S = 10.0
MAX_ERROR_CHARS = 500
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("genmesh_tool_deadline", default=None)


def time_remaining() -> float | None:
    """Seconds left to the tool call running in this context (None outside one).

    A handler that calls another service passes this on as that call's timeout.
    """
    deadline = _DEADLINE.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())


@contextlib.contextmanager
def call_deadline(deadline: float) -> Iterator[None]:
    """Within the block, ``time_remaining()`` counts down to ``deadline`` (``time.monotonic`` seconds)."""
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


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
    source: str = "builtin"
    """Where the tool comes from: ``builtin``, ``plugin`` or ``mcp:<server>``."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _TOOL_NAME.fullmatch(self.name):
            raise ValueError(f"tool name must be 1-64 characters of [A-Za-z0-9_-], got {self.name!r}")
        if not callable(self.handler):
            raise ValueError(f"tool {self.name!r}: handler must be callable")
        if not isinstance(self.timeout_s, int | float) or not math.isfinite(self.timeout_s) or self.timeout_s <= 0:
            raise ValueError(f"tool {self.name!r}: timeout_s must be a finite number > 0, got {self.timeout_s!r}")
        if self.blocking and inspect.iscoroutinefunction(self.handler):
            raise ValueError(f"tool {self.name!r}: a blocking handler must be a plain function, not async")
