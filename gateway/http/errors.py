"""Errors in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` and the HTTP status of each gRPC
status the gateway answers with: INVALID_ARGUMENT 400 naming the field (renamed back to the OpenAI request's
name), UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404, RESOURCE_EXHAUSTED 429 with ``Retry-After``,
UNAVAILABLE 503, DEADLINE_EXCEEDED 504, anything else 500. A 429 without RetryInfo says ``Retry-After: 1``."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from starlette.responses import JSONResponse

from genmesh import errors
from genmesh.status import from_rpc_error, retry_delay_s

_STATUS: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.CANCELLED: (499, "cancelled"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
}

# A GatewayRequest field path -> the OpenAI request's name for it (the longest prefix that matches wins).
_OPENAI_NAMES: tuple[tuple[str, str], ...] = (
    ("sampling.max_tokens", "max_tokens"),
    ("sampling.temperature", "temperature"),
    ("sampling.top_p", "top_p"),
    ("sampling.stop", "stop"),
    ("sampling.seed", "seed"),
    ("sampling.logprobs", "top_logprobs"),
    ("sampling.presence_penalty", "presence_penalty"),
    ("sampling.frequency_penalty", "frequency_penalty"),
    ("sampling.logit_bias", "logit_bias"),
    ("sampling.min_p", "min_p"),
    ("sampling.min_tokens", "min_tokens"),
    ("sampling.ignore_eos", "ignore_eos"),
    ("sampling.n", "n"),
    ("sampling.", "genmesh.sampling."),
    ("retrieval.", "genmesh.retrieval."),
    ("tool_calls", "genmesh.tool_calls"),
    ("require_all_stages", "genmesh.require_all_stages"),
)


@dataclass(slots=True)
class HttpError(Exception):
    """An error answered as OpenAI does: ``status`` and the body's message, type, param (the field) and code."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_field(param: str, message: str, code: str = "invalid_value") -> HttpError:
    """A 400 naming the request field ``param``."""
    return HttpError(400, f"{param}: {message}", "invalid_request_error", param, code)


def openai_name(path: str, names: Mapping[str, str] | None = None) -> str:
    """The OpenAI request's name of a GatewayRequest field path: by ``names`` (the request's own, e.g.
    ``{"question": "prompt", "sampling.logprobs": "logprobs"}`` for /v1/completions) first, then the defaults
    (``question`` is ``messages``)."""
    for prefix, name in (*(names or {}).items(), ("question", "messages"), *_OPENAI_NAMES):
        if path == prefix or path.startswith(prefix):
            return name + path.removeprefix(prefix)
    return path


def http_error(error: grpc.aio.AioRpcError, names: Mapping[str, str] | None = None) -> HttpError:
    """The HttpError of a failed gateway call, fields named as openai_name(path, ``names``) names them."""
    code = error.code()
    status, kind = _STATUS.get(code, (500, "server_error"))
    base = from_rpc_error(error, lambda path: openai_name(path, names))
    param = base.violations[0].field if isinstance(base, errors.InvalidArgument) else None
    reason = base.reason.lower() if base.reason else code.name.lower()
    headers: dict[str, str] = {}
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        delay = retry_delay_s(error)
        headers["Retry-After"] = "1" if delay is None else str(max(1, math.ceil(delay)))
        reason = "insufficient_quota" if base.reason == errors.Reason.QUOTA_EXHAUSTED else "rate_limit_exceeded"
    return HttpError(status, base.message or code.name, kind, param, _snake(reason), headers)


def _snake(reason: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", reason.lower())
