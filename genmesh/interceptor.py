"""The server interceptor of every service: request ids, one log line per RPC, error mapping, fault injection,
and the refusal of new calls while a replica drains."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc
from grpc_status import rpc_status

from genmesh.decoding import check, checked, guarded
from genmesh.errors import GenmeshError, InvalidArgument, Unavailable, UpstreamError
from genmesh.faults import FaultInjector
from genmesh.logs import REQUEST_ID
from genmesh.metrics.rpc import MethodMetrics, RpcMetrics
from genmesh.status import code_value, status_code_of, status_message, to_rpc_status
from genmesh.version import VERSION_HEADER, version

log = logging.getLogger("genmesh.rpc")

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
# A request id travels back in response metadata, so it must be a valid header value.
_VALID_REQUEST_ID = re.compile(rf"[\x20-\x7e]{{1,{MAX_REQUEST_ID_CHARS}}}")
REQUEST_ID_RULE = f"must be 1..{MAX_REQUEST_ID_CHARS} printable ASCII characters"
QUIET_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
"""Health and reflection: logged at debug level, never counted in by admission, never traced."""
DRAINING_MESSAGE = "draining: this replica is shutting down; retry on another"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
"""Its answers carry the server's genmesh version (genmesh.version.VERSION_HEADER)."""


def new_request_id() -> str:
    """A fresh request id."""
    return uuid.uuid4().hex


def valid_request_id(rid: str) -> bool:
    """Whether ``rid`` may be a request id (REQUEST_ID_RULE): it travels back as a header value."""
    return _VALID_REQUEST_ID.fullmatch(rid) is not None


def _request_id(request: Any, context: grpc.aio.ServicerContext) -> tuple[str, bool]:
    """The request's id and whether it was generated here.

    The id is the request's ``request_id`` field, else the x-request-id header, else a new one.
    Requests are never modified; servicers read the effective id from ``genmesh.logs.REQUEST_ID``.
    """
    rid = getattr(request, "request_id", "") if request is not None else ""
    if rid:
        return str(rid), False
    header = dict(context.invocation_metadata() or ()).get(REQUEST_ID_HEADER, "")
    if isinstance(header, str) and header:
        return header, False
    return new_request_id(), True


class Admission:
    """Whether new calls are let in, and how many of those let in are still running.

    Health and reflection calls are always let in and never counted: a draining replica keeps answering its
    health checks (NOT_SERVING) until the server stops.
    """

    def __init__(self) -> None:
        self.closed = False
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def running(self) -> int:
        """Calls let in whose RPC has not ended yet."""
        return self._running

    def close(self) -> None:
        """Refuse every new call from now on with UNAVAILABLE."""
        self.closed = True

    def admit(self, context: grpc.aio.ServicerContext) -> None:
        """Count the call in until its RPC ends (its status sent); Unavailable once closed."""
        if self.closed:
            raise Unavailable(DRAINING_MESSAGE)
        self._running += 1
        self._idle.clear()
        context.add_done_callback(self._leave)

    def _leave(self, _context: grpc.aio.ServicerContext) -> None:
        self._running -= 1
        if self._running == 0:
            self._idle.set()

    async def idle(self) -> None:
        """Return once no call that was let in is running."""
        await self._idle.wait()


class _Call:
    """Bookkeeping of one RPC: timing, the status it ended with, the closing log line and its metrics."""

    def __init__(
        self, method: str, context: grpc.aio.ServicerContext, request: Any, metrics: MethodMetrics | None = None
    ) -> None:
        self.method = method
        self.context = context
        self.quiet = method.startswith(QUIET_PREFIXES)
        self.request_id, self.generated_id = ("", False) if self.quiet else _request_id(request, context)
        self.code = grpc.StatusCode.OK
        self.start = time.perf_counter()
        self.token = REQUEST_ID.set(self.request_id)
        self._logged = False
        self._metrics = metrics
        if metrics is not None:
            metrics.begin()

    async def begin(self, faults: FaultInjector, admission: Admission) -> None:
        if self.request_id and not _VALID_REQUEST_ID.fullmatch(self.request_id):
            bad, self.request_id = self.request_id, new_request_id()  # log the call under an id that can be echoed
            REQUEST_ID.set(self.request_id)  # and never the rejected one, which may be a megabyte
            raise InvalidArgument.field("request_id", f"{REQUEST_ID_RULE}, got {len(bad)} characters")
        if self.request_id:
            # Trailing metadata costs nothing now; initial metadata is a write of its own, worth it
            # only when the client cannot know the id because the server made it up.
            self.context.set_trailing_metadata(((REQUEST_ID_HEADER, self.request_id),))
            if self.generated_id:
                await self.context.send_initial_metadata(((REQUEST_ID_HEADER, self.request_id),))
        elif self.method == HEALTH_CHECK:
            self.context.set_trailing_metadata(((VERSION_HEADER, version()),))  # MeshService reports it
        if not self.quiet:
            admission.admit(self.context)
        decision = faults.decide(self.method) if faults else None
        if decision is not None:
            if decision.delay_s:
                await asyncio.sleep(decision.delay_s)
            if decision.abort is not None:
                raise UpstreamError(code_value(decision.abort), f"injected fault on {self.method}")

    async def fail(self, error: BaseException) -> None:
        """Turn an exception into the RPC's status; re-raises what grpc must see."""
        if isinstance(error, GenmeshError):
            status = to_rpc_status(error)
            self.code = status_code_of(error)
            self._log()  # before abort(), which sends the status: whoever saw the status finds the line
            await self.context.abort(status.code, status.details, status.trailing_metadata)
        if isinstance(error, asyncio.CancelledError | GeneratorExit):
            self.code = grpc.StatusCode.CANCELLED
            raise error
        if isinstance(error, grpc.aio.AbortError):
            self.code = self.context.code() or grpc.StatusCode.UNKNOWN
            raise error
        if not isinstance(error, Exception):
            raise error
        self.code = grpc.StatusCode.INTERNAL
        log.exception("unhandled error in %s", self.method)
        status = rpc_status.to_status(
            status_message(grpc.StatusCode.INTERNAL, f"internal error (request_id={self.request_id})")
        )
        self._log()
        await self.context.abort(status.code, status.details, status.trailing_metadata)

    def _log(self) -> None:
        """The call's one log line and its metrics (recorded once, as the status is decided)."""
        if self._logged:
            return
        self._logged = True
        duration_s = time.perf_counter() - self.start
        if self._metrics is not None:
            self._metrics.end(self.code, duration_s)
        duration_ms = duration_s * 1000.0
        level = logging.DEBUG if self.quiet else logging.INFO
        log.log(level, "rpc", extra={"method": self.method, "status": self.code.name, "duration_ms": duration_ms})

    def end(self) -> None:
        self._log()
        try:
            REQUEST_ID.reset(self.token)
        except ValueError:  # a stream closed from another context (its task is gone)
            REQUEST_ID.set("")


def _parsed(request: Any, unary_request: bool) -> Any:
    """The request for the handler: a unary request checked now, a request stream checked message by message."""
    if not unary_request:
        return checked(request)
    check(request)
    return request


Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Streaming = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def rewrap(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[Unary, bool], Unary],
    stream: Callable[[Streaming, bool], Streaming | Unary],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour wrapped: ``unary`` wraps a handler that returns one response, ``stream`` one
    that streams them; each is told whether the request is a single message. ``request_deserializer`` replaces the
    handler's own when given."""
    codec = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary, True), **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream, True), **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary, False), **codec)
    return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream, False), **codec)


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler so that errors map to specific status codes, each RPC logs one line (and is counted in
    ``metrics`` when given), and ``admission`` decides whether a new call may run."""

    def __init__(
        self, faults: FaultInjector | None = None, admission: Admission | None = None, metrics: RpcMetrics | None = None
    ) -> None:
        self._faults = faults or FaultInjector([])
        self._admission = admission or Admission()
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        # only methods with a handler get here (grpc answers the rest UNIMPLEMENTED): bounded metric labels
        metrics = None if self._metrics is None else self._metrics.method(method, handler)
        return rewrap(
            handler,
            lambda inner, unary_request: self._unary(method, inner, unary_request, metrics),
            lambda inner, unary_request: self._stream(method, inner, unary_request, metrics),
            guarded(handler.request_deserializer),
        )

    def _unary(self, method: str, inner: Unary, unary_request: bool, metrics: MethodMetrics | None = None) -> Unary:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = _Call(method, context, request if unary_request else None, metrics)
            try:
                await call.begin(self._faults, self._admission)
                return await inner(_parsed(request, unary_request), context)
            except BaseException as error:
                await call.fail(error)
            finally:
                call.end()

        return handle

    def _stream(
        self, method: str, inner: Streaming, unary_request: bool, metrics: MethodMetrics | None = None
    ) -> Streaming | Unary:
        if not inspect.isasyncgenfunction(inner):
            # A handler that streams with ``await context.write(...)`` (grpc's health Watch does) must stay a
            # coroutine: grpc refuses a handler that mixes both styles.
            return self._unary(method, cast(Unary, inner), unary_request, metrics)

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = _Call(method, context, request if unary_request else None, metrics)
            try:
                await call.begin(self._faults, self._admission)
                async for response in inner(_parsed(request, unary_request), context):
                    yield response
            except BaseException as error:
                await call.fail(error)
            finally:
                call.end()

        return handle
