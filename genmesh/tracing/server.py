"""The server side of tracing: a SERVER span per RPC, continuing the caller's W3C trace context.

Added by ``genmesh.server.serve`` only while tracing is on, first of the interceptors, so that the RPC's log line,
admission and fault injection happen inside its span. Health and reflection calls get no span.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace

from genmesh.interceptor import QUIET_PREFIXES, Streaming, Unary, rewrap
from genmesh.tracing import PROPAGATOR, SERVER_FAULTS, end_rpc_span, rpc_attributes, tracer


class _ServerSpan:
    """The span of one RPC, current while its handler runs: the block of a ``with``, which ends it with the
    status of the error that left the block, if any."""

    def __init__(self, method: str, context: grpc.aio.ServicerContext) -> None:
        self._context = context
        carrier = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
        name, attributes = rpc_attributes(method)
        self.span = tracer().start_span(
            name, PROPAGATOR.extract(carrier), kind=trace.SpanKind.SERVER, attributes=attributes
        )
        self._current = trace.set_span_in_context(self.span)
        self._token = otel_context.attach(self._current)

    def end(self, error: BaseException | None) -> None:
        """End the span with the RPC's status (that of ``error`` when the handler raised)."""
        code = self._context.code() or _code_of(error)  # the code set by abort() or set_code(), if any
        end_rpc_span(self.span, code, code in SERVER_FAULTS)
        if otel_context.get_current() is self._current:  # not when a stream is closed from another task
            otel_context.detach(self._token)

    def __enter__(self) -> _ServerSpan:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: object) -> None:
        self.end(error)


def _code_of(error: BaseException | None) -> grpc.StatusCode:
    """The status an RPC ends with when its handler ended this way without setting one."""
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, Exception):
        return grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.CANCELLED  # CancelledError, GeneratorExit: the call went away


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler (but health and reflection) in a SERVER span named ``package.Service/Method``."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(QUIET_PREFIXES):
            return handler
        return rewrap(
            handler,
            lambda inner, _unary_request: _unary(method, inner),
            lambda inner, _unary_request: _stream(method, inner),
        )


def _unary(method: str, inner: Unary) -> Unary:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        with _ServerSpan(method, context):
            return await inner(request, context)

    return handle


def _stream(method: str, inner: Streaming) -> Streaming | Unary:
    if not inspect.isasyncgenfunction(inner):
        return _unary(method, cast(Unary, inner))  # streams with ``context.write``: a coroutine

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        with _ServerSpan(method, context):
            async for response in inner(request, context):
                yield response

    return handle
