"""The authenticated caller of the current RPC, as the rest of the gateway sees it."""

from __future__ import annotations

import contextvars
import enum
from dataclasses import dataclass, field


class Scope(enum.StrEnum):
    """What a key may call."""

    #: GatewayService.Generate.
    GENERATE = "generate"
    #: JobService: the key's own jobs.
    JOBS = "jobs"
    #: ApiKeyService, MeshService, and every key's jobs.
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Limits:
    """A key's limits (genmesh.v1.Quota); None is no limit."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    max_concurrent_streams: int | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """An API key that proved itself on this call."""

    #: "apiKeys/{id}": the owner recorded on its jobs, the subject of its quota errors.
    key_name: str
    #: The key's label for people; what audit lines show (never the secret).
    display_name: str
    scopes: frozenset[Scope]
    limits: Limits = Limits()
    #: The tools its requests may call; empty: every tool.
    allowed_tools: frozenset[str] = field(default_factory=frozenset)

    @property
    def admin(self) -> bool:
        """Whether the key sees every key's jobs and manages keys."""
        return Scope.ADMIN in self.scopes

    def may_call_tool(self, name: str) -> bool:
        """Whether the key's requests may run the tool ``name``."""
        return may_call_tool(self.allowed_tools, name)


def may_call_tool(allowed_tools: frozenset[str], name: str) -> bool:
    """Whether a key limited to ``allowed_tools`` (empty: no limit) may call the tool ``name``; an MCP tool
    by its registry name (``<server>__<tool>``), like any other."""
    return not allowed_tools or name in allowed_tools


CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("genmesh_caller", default=None)
"""The current RPC's caller, set by the gateway's auth interceptor; None when the gateway runs without keys."""


def current_caller() -> Caller | None:
    """The caller of the RPC being served (None on an open gateway)."""
    return CALLER.get()
