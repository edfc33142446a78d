"""Translation between genmesh errors and rich gRPC statuses (google.rpc.Status with details)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from genmesh import errors

_CODES: dict[type[errors.GenmeshError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
}


def status_code_of(error: errors.GenmeshError) -> grpc.StatusCode:
    """The gRPC code for a genmesh error (its nearest mapped ancestor; FAILED_PRECONDITION otherwise)."""
    if isinstance(error, UpstreamError):
        return error.code
    for cls in type(error).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return grpc.StatusCode.FAILED_PRECONDITION


def to_rpc_status(error: errors.GenmeshError) -> grpc.Status:
    """A gRPC status carrying BadRequest or RetryInfo details where the error has them."""
    code = status_code_of(error)
    details: list[any_pb2.Any] = []
    if isinstance(error, errors.InvalidArgument):
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        details.append(_pack(bad))
    if isinstance(error, errors.ResourceExhausted):
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(error.retry_after_s * 1000))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(code=code.value[0], message=error.message, details=details)
    return rpc_status.to_status(status)


def _pack(message: error_details_pb2.BadRequest | error_details_pb2.RetryInfo) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


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


def from_rpc_error(error: grpc.aio.AioRpcError, field_prefix: str = "") -> errors.GenmeshError:
    """Rebuild a genmesh error from an upstream failure, so a hop can pass it on faithfully.

    Field paths are placed under ``field_prefix`` when one is given.
    """
    code = error.code()
    message = error.details() or code.name
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        violations = field_violations(error) or [errors.FieldViolation(field_prefix or "request", message)]
        invalid = errors.InvalidArgument(violations)
        return invalid.prefixed(field_prefix) if field_prefix else invalid
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return errors.ResourceExhausted(message, retry_delay_s(error) or 1.0)
    return error_for_code(code, message)


def error_for_code(code: grpc.StatusCode, message: str) -> errors.GenmeshError:
    """The genmesh error that travels as ``code`` with ``message`` (an UpstreamError for codes without a class)."""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return errors.InvalidArgument.field("request", message)
    for cls, mapped in _CODES.items():
        if mapped == code:
            return cls(message)
    return UpstreamError(code, message)


def code_of_value(value: int) -> grpc.StatusCode:
    """The grpc.StatusCode of a numeric google.rpc.Code (UNKNOWN for values outside the enum)."""
    return next((code for code in grpc.StatusCode if code.value[0] == value), grpc.StatusCode.UNKNOWN)


class UpstreamError(errors.GenmeshError):
    """An upstream failure with a code genmesh has no class for; passed on with that code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


__all__ = [
    "UpstreamError",
    "code_of_value",
    "code_value",
    "error_for_code",
    "field_violations",
    "from_rpc_error",
    "retry_delay_s",
    "status_code_of",
    "to_rpc_status",
]
