"""The client side of tracing: a CLIENT span per call made inside a trace, its context sent as ``traceparent``.

``genmesh.channels.open_channel`` wraps its channel in ``TracedChannel`` while tracing is on. The wrapper acts
where a stub's call is made, not through grpc.aio client interceptors, which run every call through a task and a
call object of their own (some 70 µs of CPU a call on two busy cores); callers get grpc's own call objects
(``cancel``, ``read``, ``code``, metadata), which opentelemetry-instrumentation-grpc's streaming interceptors
replace with bare iterators. A call made outside any span (a background load feed, a poll) starts no trace of its
own and sends no trace context.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from opentelemetry import trace

from genmesh.tracing import PROPAGATOR, end_rpc_span, rpc_attributes, tracer

_ending: set[asyncio.Task[None]] = set()
"""Tasks reading the status of finished calls (kept referenced until done)."""


async def _end(span: trace.Span, call: grpc.aio.Call, end_time: int) -> None:
    code = await call.code()  # at once: the call is done
    end_rpc_span(span, code, code != grpc.StatusCode.OK, end_time)


def _call_done(span: trace.Span, call: grpc.aio.Call) -> None:
    # A done callback cannot await the status (grpc.aio's code() is a coroutine): read it in a task.
    task = asyncio.get_running_loop().create_task(_end(span, call, time.time_ns()))
    _ending.add(task)
    task.add_done_callback(_ending.discard)


class _TracedMultiCallable:
    """One method of a channel: a call made inside a trace gets a CLIENT span and sends its context."""

    def __init__(self, inner: Any, method: str | bytes) -> None:
        self._inner = inner
        self._name, self._attributes = rpc_attributes(method.decode() if isinstance(method, bytes) else method)

    def __call__(self, *args: Any, metadata: Any = None, **kwargs: Any) -> Any:
        if not trace.get_current_span().get_span_context().is_valid:
            return self._inner(*args, metadata=metadata, **kwargs)
        span = tracer().start_span(self._name, kind=trace.SpanKind.CLIENT, attributes=self._attributes)
        carrier: dict[str, str] = {}
        PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
        try:
            call = self._inner(*args, metadata=grpc.aio.Metadata(*(metadata or ()), *carrier.items()), **kwargs)
        except BaseException:
            end_rpc_span(span, grpc.StatusCode.UNKNOWN, True)
            raise
        call.add_done_callback(lambda done: _call_done(span, done))
        return call


class TracedChannel(grpc.aio.Channel):
    """``channel`` with every call made inside a trace traced; everything else is the channel's own."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    async def __aenter__(self) -> TracedChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._channel.close(None)

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _TracedMultiCallable(self._channel.unary_unary(method, *args, **kwargs), method)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _TracedMultiCallable(self._channel.unary_stream(method, *args, **kwargs), method)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _TracedMultiCallable(self._channel.stream_unary(method, *args, **kwargs), method)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _TracedMultiCallable(self._channel.stream_stream(method, *args, **kwargs), method)
