"""The one exception hierarchy of genmesh; the error interceptor maps it to gRPC status codes.

Domain code (engine, index, tool registry) raises these and never imports grpc.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class Reason(enum.StrEnum):
    """Why a call failed, for clients to branch on: the google.rpc.ErrorInfo reason (docs/CONTRACTS.md lists them)."""

    INVALID_FIELD = "INVALID_FIELD"
    NOT_FOUND = "NOT_FOUND"
    JOB_NOT_FOUND = "JOB_NOT_FOUND"
    #: RESOURCE_EXHAUSTED without a more specific cause.
    OVERLOADED = "OVERLOADED"
    #: The gateway already runs --max-streams Generate streams.
    GATEWAY_STREAM_LIMIT = "GATEWAY_STREAM_LIMIT"
    #: The inference service's waiting queue holds --max-waiting generations.
    INFERENCE_QUEUE_FULL = "INFERENCE_QUEUE_FULL"
    #: The job queue holds --job-queue-max jobs.
    JOB_QUEUE_FULL = "JOB_QUEUE_FULL"
    TIMED_OUT = "TIMED_OUT"
    UNAVAILABLE = "UNAVAILABLE"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    CANCELLED = "CANCELLED"
    #: The request could not be parsed as the RPC's message (INVALID_ARGUMENT).
    MALFORMED_REQUEST = "MALFORMED_REQUEST"
    #: No ``authorization: Bearer <key>`` metadata on a gateway that requires keys (UNAUTHENTICATED).
    API_KEY_MISSING = "API_KEY_MISSING"
    #: The key is unknown, revoked or expired (UNAUTHENTICATED).
    API_KEY_INVALID = "API_KEY_INVALID"
    #: The key lacks the scope the RPC needs (PERMISSION_DENIED).
    SCOPE_MISSING = "SCOPE_MISSING"
    #: The key may not call this tool (PERMISSION_DENIED, reported in the call's own ToolResult).
    TOOL_NOT_ALLOWED = "TOOL_NOT_ALLOWED"
    #: A per-minute limit or the concurrent-stream limit of the key is reached (RESOURCE_EXHAUSTED).
    RATE_LIMITED = "RATE_LIMITED"
    #: The key's daily token quota is spent (RESOURCE_EXHAUSTED).
    QUOTA_EXHAUSTED = "QUOTA_EXHAUSTED"


QUOTED_CHARS = 64
"""How much of a client's string an error message quotes."""


def quote(text: str, limit: int = QUOTED_CHARS) -> str:
    """A client's string for an error message: its ``repr``, of the first ``limit`` characters when longer (then
    with its length), so that a 10,000-character name never comes back whole in a status or a log line."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: its path (``sampling.max_tokens``) and what is wrong."""

    field: str
    description: str


class GenmeshError(Exception):
    """Base of every error genmesh reports to a client.

    ``reason`` (the class's default unless given) and ``metadata`` travel as the status's ErrorInfo; an error
    whose class sets no reason reports its status code's name.
    """

    reason: str = ""

    def __init__(self, message: str, *, reason: str = "", metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason
        self.metadata = dict(metadata or {})


class InvalidArgument(GenmeshError):
    """The client sent a bad request; carries the offending fields."""

    reason = Reason.INVALID_FIELD

    def __init__(self, violations: list[FieldViolation] | FieldViolation) -> None:
        self.violations = [violations] if isinstance(violations, FieldViolation) else list(violations)
        if not self.violations:
            raise ValueError("InvalidArgument needs at least one violation")
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        """Shorthand for a single bad field."""
        return cls(FieldViolation(field, description))

    def prefixed(self, prefix: str) -> InvalidArgument:
        """The same violations with their paths placed under ``prefix``."""
        return InvalidArgument([FieldViolation(f"{prefix}.{v.field}", v.description) for v in self.violations])


class NotFound(GenmeshError):
    """A named thing (tool, collection, request id, job) does not exist."""

    reason = Reason.NOT_FOUND


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """One limit a request ran into: whose (``apiKeys/0123abcd4567``) and which (``tokens_per_minute: 1000``)."""

    subject: str
    description: str


class ResourceExhausted(GenmeshError):
    """A bounded queue, cap or quota is full; the client may retry after ``retry_after_s`` (None: a refusal received
    without that advice, e.g. gRPC's own for a message over the size limit). Quota errors name the
    limits they hit (sent as a google.rpc.QuotaFailure)."""

    reason = Reason.OVERLOADED

    def __init__(
        self,
        message: str,
        retry_after_s: float | None = 1.0,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        quota_violations: list[QuotaViolation] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_s = retry_after_s
        self.quota_violations = list(quota_violations or [])


class Unauthenticated(GenmeshError):
    """The caller did not prove who it is: no API key, or one the gateway does not accept."""

    reason = Reason.API_KEY_INVALID


class PermissionDenied(GenmeshError):
    """The caller is known but may not do this (a scope or a tool its key does not grant)."""

    reason = Reason.SCOPE_MISSING


class DeadlineExceeded(GenmeshError):
    """The work did not finish within its deadline or budget."""

    reason = Reason.TIMED_OUT


class Unavailable(GenmeshError):
    """A dependency cannot be reached right now; retrying later may succeed."""

    reason = Reason.UNAVAILABLE


class FailedPrecondition(GenmeshError):
    """The system is not in a state that allows the operation (e.g. not ready yet)."""

    reason = Reason.FAILED_PRECONDITION


class Cancelled(GenmeshError):
    """The operation was cancelled by its caller or by an Abort."""

    reason = Reason.CANCELLED


class UpstreamError(GenmeshError):
    """An upstream failure with a status genmesh has no class for, passed on with its numeric google.rpc.Code."""

    def __init__(self, code_value: int, message: str) -> None:
        super().__init__(message)
        self.code_value = code_value
