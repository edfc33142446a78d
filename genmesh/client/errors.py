"""The exceptions of genmesh.client: a failed call's status as the genmesh error of its code (genmesh.errors),
narrowed to the client's names, keeping the ErrorInfo reason and metadata. Catch ``GenmeshError`` for all."""

from __future__ import annotations

import grpc

from genmesh import errors
from genmesh.errors import FieldViolation, GenmeshError
from genmesh.status import from_rpc_error


class BadRequest(errors.InvalidArgument):
    """INVALID_ARGUMENT: ``field_violations`` names each bad field of the request (``sampling.max_tokens``)."""

    @property
    def field_violations(self) -> list[FieldViolation]:
        return self.violations


class RateLimited(errors.ResourceExhausted):
    """RESOURCE_EXHAUSTED (a full queue, the gateway's stream limit, a key's rate limit or quota): ``retry_after_s``
    is the server's RetryInfo delay in seconds, None when it sent none; ``quota_violations`` names each limit of
    the API key that was reached (QuotaFailure)."""


class Unauthenticated(errors.Unauthenticated):
    """UNAUTHENTICATED: no API key, or one the gateway does not accept."""


class PermissionDenied(errors.PermissionDenied):
    """PERMISSION_DENIED: the API key lacks the scope the call needs."""


class NotFound(errors.NotFound):
    """NOT_FOUND: e.g. no job with that id (for this key)."""


class Unavailable(errors.Unavailable):
    """UNAVAILABLE: the gateway, or a service it needs, cannot answer now; retrying later may succeed."""


class DeadlineExceeded(errors.DeadlineExceeded):
    """DEADLINE_EXCEEDED: the call's deadline passed."""


class FieldError(ValueError):
    """A request this client cannot send: ``path``, the bad key (``messages[1].tool_calls[0].function``,
    ``tools[0].function.parameters``), and what is wrong with it (the HTTP front answers it as a 400 naming
    ``path``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path, self.message = path, message


_NARROWED: dict[type[GenmeshError], type[GenmeshError]] = {
    errors.Unauthenticated: Unauthenticated,
    errors.PermissionDenied: PermissionDenied,
    errors.NotFound: NotFound,
    errors.Unavailable: Unavailable,
    errors.DeadlineExceeded: DeadlineExceeded,
}


def client_error(error: grpc.aio.AioRpcError) -> GenmeshError:
    """The exception of a failed call: one of this module's classes, else the genmesh error of its code
    (FailedPrecondition, Cancelled, UpstreamError for codes without a class)."""
    base = from_rpc_error(error)
    narrowed: GenmeshError
    if isinstance(base, errors.InvalidArgument):
        narrowed = BadRequest(base.violations)
    elif isinstance(base, errors.ResourceExhausted):
        narrowed = RateLimited(base.message, base.retry_after_s, quota_violations=base.quota_violations)
    elif type(base) in _NARROWED:
        narrowed = _NARROWED[type(base)](base.message)
    else:
        return base
    narrowed.reason, narrowed.metadata = base.reason, base.metadata
    return narrowed


__all__ = [
    "BadRequest",
    "DeadlineExceeded",
    "FieldError",
    "FieldViolation",
    "GenmeshError",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "Unauthenticated",
    "Unavailable",
    "client_error",
]
