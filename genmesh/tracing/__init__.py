"""OpenTelemetry traces of one process: the SDK set up for its service, W3C trace context, and the span of an RPC.

Tracing is on when an OTLP endpoint is given (``--otlp-endpoint``): ``install`` sets up a tracer provider whose
spans go through a batch processor to an OTLP/gRPC exporter, sampled ``ParentBased(TraceIdRatioBased(ratio))``;
at the gateway (the public edge) the ratio also decides for calls that arrive with a traceparent.
Without an endpoint nothing is set up: no SDK is imported, servers and channels get no tracing interceptors, and
``tracer()`` is OpenTelemetry's no-op tracer. The provider is genmesh's own, not OpenTelemetry's global one, so
that it can be replaced (tests install one per test); code that makes spans takes ``tracer()``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

PROPAGATOR = TraceContextTextMapPropagator()
"""W3C Trace Context: the ``traceparent`` and ``tracestate`` headers, carried in gRPC metadata."""

SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
"""The codes that mark a server span as an error (OpenTelemetry's gRPC conventions); a client span is an error on
every code but OK."""

EXPORT_TIMEOUT_S = 3.0
"""The most one export may take, retries included, unless OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT says otherwise:
also about the most a stopping process waits for its last spans when the receiver is down."""


@dataclass(frozen=True, slots=True)
class TraceSettings:
    """Where spans go and which share of new traces is kept."""

    endpoint: str = ""
    """OTLP/gRPC receiver: ``host:port`` or ``http://host:port`` (plaintext), ``https://host:port`` (TLS); off when
    empty."""
    sample_ratio: float = 1.0
    """Share of traces started here that are recorded; a call that arrives with a traceparent follows its flag,
    except at the gateway, where the ratio decides for clients' traces too (they are still continued)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_ratio <= 1.0:
            raise ValueError(f"trace sample ratio {self.sample_ratio} is outside 0..1")


_provider: TracerProvider | None = None
_tracer: trace.Tracer = trace.NoOpTracer()


def enabled() -> bool:
    """Whether this process exports traces."""
    return _provider is not None


def tracer() -> trace.Tracer:
    """The tracer of this process's spans (a no-op one while tracing is off)."""
    return _tracer


def _exporter(endpoint: str) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    url = endpoint if "://" in endpoint else f"http://{endpoint}"
    configured = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT" in os.environ or "OTEL_EXPORTER_OTLP_TIMEOUT" in os.environ
    timeout = None if configured else EXPORT_TIMEOUT_S
    return OTLPSpanExporter(endpoint=url, insecure=not url.startswith("https://"), timeout=timeout)


def install(service: str, settings: TraceSettings, exporter: SpanExporter | None = None) -> bool:
    """Trace this process as ``genmesh-<service>`` when ``settings`` has an endpoint (or ``exporter`` is given,
    which replaces the OTLP one); whether tracing is on. A provider installed before is shut down first."""
    global _provider, _tracer
    shutdown()
    if not settings.endpoint and exporter is None:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    version = _version()
    resource = Resource.create(
        {
            "service.name": f"genmesh-{service}",
            "service.namespace": "genmesh",
            "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
            "service.version": version,
        }
    )
    ratio = TraceIdRatioBased(settings.sample_ratio)
    # The gateway is the public edge: a client's traceparent is continued, but its sampled flag decides nothing
    # there (else any client could force recording); the services behind it follow the gateway's decision.
    edge = {"remote_parent_sampled": ratio, "remote_parent_not_sampled": ratio} if service == "gateway" else {}
    provider = TracerProvider(resource=resource, sampler=ParentBased(ratio, **edge))
    provider.add_span_processor(BatchSpanProcessor(exporter or _exporter(settings.endpoint)))
    _provider, _tracer = provider, provider.get_tracer("genmesh", version)
    return True


def flush() -> bool:
    """Export the spans ended so far (blocks until the export ends: from a coroutine, run it in a thread);
    whether all went out."""
    return _provider is None or _provider.force_flush()


def shutdown() -> None:
    """Export what is left and turn tracing off; blocks up to about EXPORT_TIMEOUT_S when the receiver is down."""
    global _provider, _tracer
    provider, _provider, _tracer = _provider, None, trace.NoOpTracer()
    if provider is not None:
        provider.shutdown()


@contextlib.contextmanager
def installed(service: str, settings: TraceSettings) -> Iterator[bool]:
    """Tracing installed for the block (whether it is on), flushed and shut down after it."""
    try:
        yield install(service, settings)
    finally:
        shutdown()


def _version() -> str:
    try:
        return importlib.metadata.version("genmesh")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def rpc_attributes(method: str) -> tuple[str, dict[str, str]]:
    """The span name and attributes of an RPC to ``method`` (``/package.Service/Method``)."""
    name = method.lstrip("/")
    service, _, short = name.rpartition("/")
    return name, {"rpc.system": "grpc", "rpc.service": service, "rpc.method": short}


def end_rpc_span(span: trace.Span, code: grpc.StatusCode, error: bool, end_time: int | None = None) -> None:
    """Record the RPC's status ``code`` on ``span`` (an error status when ``error``) and end it."""
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if error:
        span.set_status(trace.Status(trace.StatusCode.ERROR, code.name))
    span.end(end_time)
