"""The one exception hierarchy of genmesh; the error interceptor maps it to gRPC status codes.

Domain code (engine, index, tool registry) raises these and never imports grpc.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: its path (``sampling.max_tokens``) and what is wrong."""

    field: str
    description: str


class GenmeshError(Exception):
    """Base of every error genmesh reports to a client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(GenmeshError):
    """The client sent a bad request; carries the offending fields."""

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


class ResourceExhausted(GenmeshError):
    """A bounded queue or cap is full; the client may retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(GenmeshError):
    """The work did not finish within its deadline or budget."""


class Unavailable(GenmeshError):
    """A dependency cannot be reached right now; retrying later may succeed."""


class FailedPrecondition(GenmeshError):
    """The system is not in a state that allows the operation (e.g. not ready yet)."""


class Cancelled(GenmeshError):
    """The operation was cancelled by its caller or by an Abort."""
