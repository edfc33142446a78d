"""RPC metrics of every service, recorded by the server interceptor (``genmesh.interceptor``).

The names and labels are those of grpc-ecosystem's go-grpc-prometheus (``grpc_server_started_total``,
``grpc_server_handled_total``, ``grpc_server_handling_seconds``, labels ``grpc_type``, ``grpc_service``,
``grpc_method``, ``grpc_code`` spelt as Go spells codes: ``OK``, ``Canceled``, ``InvalidArgument``) with the
``genmesh_rpc_`` prefix, so the dashboards and alerts written for it work with the names changed. The labels
keep their ``grpc_`` prefix also because Kubernetes service discovery attaches a ``service`` target label of
its own. ``genmesh_rpc_in_flight`` (which go-grpc-prometheus lacks) counts the calls running, streams included.

Every RPC is counted, health checks and reflection included: their methods are a fixed set, and only methods
the server has a handler for reach the interceptor (an unknown one is UNIMPLEMENTED before it), so the label
sets stay bounded whatever clients send.
"""

from __future__ import annotations

import grpc
from prometheus_client import Counter

from genmesh.metrics.core import LATENCY_BUCKETS, Metrics

LABELS = ("grpc_type", "grpc_service", "grpc_method")

#: ``grpc.StatusCode`` → the code's name as Go's ``codes.Code.String()`` writes it.
GO_CODE_NAMES = {
    code: "Canceled" if code is grpc.StatusCode.CANCELLED else "".join(w.title() for w in code.name.split("_"))
    for code in grpc.StatusCode
}
GO_CODE_NAMES[grpc.StatusCode.OK] = "OK"


def rpc_type(handler: grpc.RpcMethodHandler) -> str:
    """go-grpc-prometheus's ``grpc_type`` of a handler: unary, client_stream, server_stream or bidi_stream."""
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


class MethodMetrics:
    """The series of one method, looked up once: what one call records when it begins and when it ends."""

    __slots__ = ("_handled", "_handled_by_code", "_handling", "_in_flight", "_labels", "_started")

    def __init__(self, metrics: RpcMetrics, labels: tuple[str, str, str]) -> None:
        self._started = metrics.started.labels(*labels)
        self._in_flight = metrics.in_flight.labels(*labels)
        self._handling = metrics.handling.labels(*labels)
        self._handled = metrics.handled
        self._handled_by_code: dict[grpc.StatusCode, Counter] = {
            grpc.StatusCode.OK: metrics.handled.labels(*labels, "OK")
        }
        self._labels = labels

    def begin(self) -> None:
        """A call began."""
        self._started.inc()
        self._in_flight.inc()

    def end(self, code: grpc.StatusCode, seconds: float) -> None:
        """The call ended with ``code`` after ``seconds``."""
        self._in_flight.dec()
        handled = self._handled_by_code.get(code)
        if handled is None:
            handled = self._handled_by_code[code] = self._handled.labels(*self._labels, GO_CODE_NAMES[code])
        handled.inc()
        self._handling.observe(seconds)


class RpcMetrics:
    """The RPC metrics of a server's interceptor."""

    def __init__(self, metrics: Metrics) -> None:
        self.started = metrics.counter(
            "genmesh_rpc_started_total",
            "RPCs started on the server (go-grpc-prometheus: grpc_server_started_total)",
            LABELS,
        )
        self.handled = metrics.counter(
            "genmesh_rpc_handled_total",
            "RPCs completed on the server, by status code (go-grpc-prometheus: grpc_server_handled_total)",
            (*LABELS, "grpc_code"),
        )
        self.handling = metrics.histogram(
            "genmesh_rpc_handling_seconds",
            "Time from an RPC's start to its status, streams included (go-grpc-prometheus: "
            "grpc_server_handling_seconds)",
            LATENCY_BUCKETS,
            LABELS,
        )
        self.in_flight = metrics.gauge("genmesh_rpc_in_flight", "RPCs running on the server, streams included", LABELS)
        self._methods: dict[str, MethodMetrics] = {}

    def method(self, full_method: str, handler: grpc.RpcMethodHandler) -> MethodMetrics:
        """The series of ``full_method`` (``/package.Service/Method``), served by ``handler``."""
        found = self._methods.get(full_method)
        if found is None:
            service, _, name = full_method.lstrip("/").rpartition("/")
            found = self._methods[full_method] = MethodMetrics(self, (rpc_type(handler), service, name))
        return found
