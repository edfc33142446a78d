"""A real OTLP/gRPC trace receiver: opentelemetry-proto's TraceService on a grpc.aio server, keeping every span.

    async with running_receiver() as receiver:
        ...  # processes export to receiver.endpoint (--otlp-endpoint)
        spans = await receiver.wait_for(lambda spans: len(spans) >= 3)

It runs on the test's event loop, so an exporter in the same process must be flushed from a thread
(``await asyncio.to_thread(genmesh.tracing.flush)``), never from the loop itself.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    """One exported span, with ids in lowercase hex as they appear in a ``traceparent`` and in log lines."""

    service: str
    """The ``service.name`` of the resource that exported it."""
    instance: str
    """Its ``service.instance.id``."""
    trace_id: str
    span_id: str
    parent_span_id: str
    """Empty for a root span."""
    name: str
    kind: str
    """SERVER, CLIENT, INTERNAL, PRODUCER or CONSUMER."""
    attributes: dict[str, Any] = field(default_factory=dict)
    status: str = "UNSET"
    """UNSET, OK or ERROR."""
    start_ns: int = 0
    end_ns: int = 0


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: _value(item.value) for item in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _spans(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        service=str(resource.get("service.name", "")),
                        instance=str(resource.get("service.instance.id", "")),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=trace_pb2.Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                        attributes=_attributes(span.attributes),
                        status=trace_pb2.Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                    )
                )
    return spans


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps the spans of every Export call, in the order they arrived."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.exports = 0
        """Export calls answered (an empty one counts too)."""
        self._changed = asyncio.Condition()
        self._server: grpc.aio.Server | None = None
        self.endpoint = ""
        """``host:port`` to give as --otlp-endpoint, once started."""

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        async with self._changed:
            self.spans.extend(_spans(request))
            self.exports += 1
            self._changed.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0: a free port); the endpoint."""
        self._server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)  # type: ignore[no-untyped-call]
        bound = self._server.add_insecure_port(f"{host}:{port}")
        await self._server.start()
        self.endpoint = f"{host}:{bound}"
        return self.endpoint

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)

    def traces(self) -> dict[str, list[ReceivedSpan]]:
        """The spans received so far, by trace id."""
        by_trace: dict[str, list[ReceivedSpan]] = defaultdict(list)
        for span in self.spans:
            by_trace[span.trace_id].append(span)
        return dict(by_trace)

    async def wait_for(self, done: Callable[[list[ReceivedSpan]], bool], timeout_s: float = 30.0) -> list[ReceivedSpan]:
        """The spans received, once ``done`` holds for them; TimeoutError (listing what came) otherwise."""
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(lambda: done(self.spans))
        except TimeoutError:
            names = [(span.service, span.name, span.kind) for span in self.spans]
            raise TimeoutError(f"after {timeout_s} s the receiver holds {len(names)} spans: {names}") from None
        return list(self.spans)

    def clear(self) -> None:
        self.spans.clear()


@asynccontextmanager
async def running_receiver(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[OtlpReceiver]:
    """An OtlpReceiver listening for the block."""
    receiver = OtlpReceiver()
    await receiver.start(host, port)
    try:
        yield receiver
    finally:
        await receiver.stop()
