"""Translation between genmesh errors and rich gRPC statuses (google.rpc.Status with details)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from genmesh import errors

_Violation = TypeVar(
    "_Violation", error_details_pb2.BadRequest.FieldViolation, error_details_pb2.QuotaFailure.Violation
)

ERROR_DOMAIN = "genmesh.dev"
"""The google.rpc.ErrorInfo domain of every genmesh error."""

# Bounds on what a status carries, whatever a caller sent: its trailers (grpc-message and the details, base64)
# stay under about 4 KB, far below the 8 KB of metadata clients accept by default.
MAX_MESSAGE_BYTES = 512
MAX_TEXT_BYTES = 256
"""A field violation's field or description, an ErrorInfo metadata value, a quota violation's subject or text."""
MAX_VIOLATIONS_BYTES = 1536
"""Field or quota violations beyond it are left out; ErrorInfo metadata ``omittedViolations`` counts them."""

_CODES: dict[type[errors.GenmeshError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


def status_code_of(error: errors.GenmeshError) -> grpc.StatusCode:
    """The gRPC code for a genmesh error (its nearest mapped ancestor; FAILED_PRECONDITION otherwise)."""
    if isinstance(error, errors.UpstreamError):
        return code_of_value(error.code_value)
    for cls in type(error).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return grpc.StatusCode.FAILED_PRECONDITION


def to_rpc_status(error: errors.GenmeshError) -> grpc.Status:
    """The gRPC status of a genmesh error, with the details of ``status_of``."""
    return rpc_status.to_status(status_of(error))


def status_of(error: errors.GenmeshError) -> status_pb2.Status:
    """The google.rpc.Status of a genmesh error: its code and message, an ErrorInfo, and BadRequest or RetryInfo
    where the error has them. In-band errors (ToolError, Degraded, JobError) carry it as their ``status``."""
    code = status_code_of(error)
    metadata = dict(error.metadata)
    details: list[any_pb2.Any] = []
    if isinstance(error, errors.InvalidArgument):
        field_violations = _within_budget(
            error_details_pb2.BadRequest.FieldViolation(field=bounded(v.field), description=bounded(v.description))
            for v in error.violations
        )
        details.append(_pack(error_details_pb2.BadRequest(field_violations=field_violations)))
        if len(field_violations) < len(error.violations):
            metadata["omittedViolations"] = str(len(error.violations) - len(field_violations))
    if isinstance(error, errors.ResourceExhausted):
        if error.retry_after_s is not None:
            delay = duration_pb2.Duration()
            delay.FromMilliseconds(int(error.retry_after_s * 1000))
            details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        if error.quota_violations:
            quota = error_details_pb2.QuotaFailure(
                violations=_within_budget(
                    error_details_pb2.QuotaFailure.Violation(
                        subject=bounded(v.subject), description=bounded(v.description)
                    )
                    for v in error.quota_violations
                )
            )
            details.append(_pack(quota))
    details.insert(0, _pack(_error_info(code, error.reason, metadata)))
    message = bounded(error.message, MAX_MESSAGE_BYTES)
    return status_pb2.Status(code=code_value(code), message=message, details=details)


def bounded(text: str, limit: int = MAX_TEXT_BYTES) -> str:
    """``text`` if its UTF-8 is at most ``limit`` bytes, else its first ``limit`` bytes noting its length."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return f"{data[:limit].decode(errors='ignore')}… ({len(text)} characters)"


def _within_budget(violations: Iterable[_Violation]) -> list[_Violation]:
    """The leading violations whose encoding fits in MAX_VIOLATIONS_BYTES (the first always)."""
    kept: list[_Violation] = []
    size = 0
    for violation in violations:
        size += violation.ByteSize() + 4  # its tag and length inside the detail
        if kept and size > MAX_VIOLATIONS_BYTES:
            break
        kept.append(violation)
    return kept


def status_message(
    code: grpc.StatusCode, message: str, reason: str = "", metadata: Mapping[str, str] | None = None
) -> status_pb2.Status:
    """A google.rpc.Status for an error known only by its code and message (a stage's Degraded event, a ToolError
    the gateway makes): the two, plus an ErrorInfo whose reason defaults to that of the code's error class."""
    return status_pb2.Status(
        code=code_value(code),
        message=bounded(message, MAX_MESSAGE_BYTES),
        details=[_pack(_error_info(code, reason, metadata or {}))],
    )


def _error_info(code: grpc.StatusCode, reason: str, metadata: Mapping[str, str]) -> error_details_pb2.ErrorInfo:
    """An ErrorInfo whose reason defaults to that of the code's error class (to the code's name when none)."""
    default = next((cls.reason for cls, mapped in _CODES.items() if mapped == code), code.name)
    values = {key: bounded(value) for key, value in metadata.items()}
    return error_details_pb2.ErrorInfo(reason=str(reason or default), domain=ERROR_DOMAIN, metadata=values)


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def error_info(error: grpc.aio.AioRpcError | grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo carried by a failed call, if any."""
    status = rpc_status.from_call(error)
    return None if status is None else error_info_of(status)


def error_info_of(status: status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo among a google.rpc.Status's details, if any."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def code_value(code: grpc.StatusCode) -> int:
    """The numeric google.rpc.Code of a grpc.StatusCode."""
    value: int = code.value[0]
    return value


def field_violations(error: grpc.aio.AioRpcError | grpc.RpcError) -> list[errors.FieldViolation]:
    """The BadRequest field violations carried by a failed call, if any."""
    status = rpc_status.from_call(error)
    if status is None:
        return []
    found: list[errors.FieldViolation] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.extend(errors.FieldViolation(v.field, v.description) for v in bad.field_violations)
    return found


def quota_violations(error: grpc.aio.AioRpcError | grpc.RpcError) -> list[errors.QuotaViolation]:
    """The QuotaFailure violations carried by a failed call, if any (the limits an API key reached)."""
    status = rpc_status.from_call(error)
    if status is None:
        return []
    found: list[errors.QuotaViolation] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
            found.extend(errors.QuotaViolation(v.subject, v.description) for v in failure.violations)
    return found


def retry_delay_s(error: grpc.aio.AioRpcError | grpc.RpcError) -> float | None:
    """The RetryInfo delay carried by a failed call, if any."""
    status = rpc_status.from_call(error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToMilliseconds()) / 1000.0
    return None


def from_rpc_error(error: grpc.aio.AioRpcError, rename: Callable[[str], str] | None = None) -> errors.GenmeshError:
    """Rebuild a genmesh error from an upstream failure, so a hop can pass it on faithfully (with the
    upstream's ErrorInfo reason and metadata).

    ``rename`` maps the upstream request's field paths (``prompt``, ``calls[2].name``) to the caller's own
    (``question``, ``tool_calls[2].name``), so that a client is told which of *its* fields is wrong.
    """
    code = error.code()
    message = error.details() or code.name
    rebuilt: errors.GenmeshError
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        violations = field_violations(error) or [errors.FieldViolation("request", message)]
        if rename is not None:
            violations = [errors.FieldViolation(rename(v.field), v.description) for v in violations]
        rebuilt = errors.InvalidArgument(violations)
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        rebuilt = errors.ResourceExhausted(message, retry_delay_s(error), quota_violations=quota_violations(error))
    else:
        rebuilt = error_for_code(code, message)
    return _keep_reason(rebuilt, error_info(error))


def error_from_status(status: status_pb2.Status, message: str) -> errors.GenmeshError:
    """The genmesh error of an in-band status (a Degraded stage's, a ToolError's) with ``message``, keeping the
    status's ErrorInfo reason (TOOL_NOT_ALLOWED stays TOOL_NOT_ALLOWED, not the code's default)."""
    return _keep_reason(error_for_code(code_of_value(status.code), message), error_info_of(status))


def _keep_reason(error: errors.GenmeshError, info: error_details_pb2.ErrorInfo | None) -> errors.GenmeshError:
    if info is not None and info.domain == ERROR_DOMAIN:  # the upstream's own reason, e.g. INFERENCE_QUEUE_FULL
        error.reason = info.reason
        error.metadata = dict(info.metadata)
    return error


def error_for_code(code: grpc.StatusCode, message: str) -> errors.GenmeshError:
    """The genmesh error that travels as ``code`` with ``message`` (an UpstreamError for codes without a class)."""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return errors.InvalidArgument.field("request", message)
    for cls, mapped in _CODES.items():
        if mapped == code:
            return cls(message)
    return errors.UpstreamError(code_value(code), message)


def code_of_value(value: int) -> grpc.StatusCode:
    """The grpc.StatusCode of a numeric google.rpc.Code (UNKNOWN for values outside the enum)."""
    return next((code for code in grpc.StatusCode if code.value[0] == value), grpc.StatusCode.UNKNOWN)


__all__ = [
    "bounded",
    "code_of_value",
    "code_value",
    "error_for_code",
    "error_from_status",
    "error_info",
    "error_info_of",
    "field_violations",
    "from_rpc_error",
    "quota_violations",
    "retry_delay_s",
    "status_code_of",
    "status_message",
    "status_of",
    "to_rpc_status",
]
