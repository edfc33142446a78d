"""Prometheus metrics of the HTTP front (``genmesh serve http --metrics-port``), recorded around each route's ASGI
app, in the shape of the services' ``genmesh_rpc_*`` (genmesh.metrics.rpc).

``route`` is the template of the route that answered (``/v1/chat/completions``, ``/v1/models/{model}``), never the
raw path: an unknown ``/v1/`` path is ``/v1/{rest}``, a path outside /v1 the web page's ``/{path}``, so the label
sets stay bounded whatever clients send (a request no route answers, possible only without the page, is not
counted). ``code`` is the HTTP status
(499: the client left before a whole answer). A WebSocket counts as one request of ``/v1/ws`` for as long as it
is open (code 101 once accepted, else the refusal's)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import Counter, Gauge
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genmesh.metrics import LATENCY_BUCKETS, Metrics

_EVENT_STREAM = b"text/event-stream"


class HttpMetrics:
    """The front's series."""

    def __init__(self, metrics: Metrics) -> None:
        self.started = metrics.counter("genmesh_http_requests_started_total", "HTTP requests started", ["route"])
        self.handled = metrics.counter(
            "genmesh_http_requests_handled_total", "HTTP requests answered, by status code", ["route", "code"]
        )
        self.handling = metrics.histogram(
            "genmesh_http_request_handling_seconds",
            "Time from a request's start to the end of its response, streams included",
            LATENCY_BUCKETS,
            ["route"],
        )
        self.in_flight = metrics.gauge("genmesh_http_requests_in_flight", "HTTP requests being answered", ["route"])
        self.streams = metrics.gauge(
            "genmesh_http_streams_open", "Streams open: SSE answers and WebSocket connections", ["protocol"]
        )
        self.disconnects = metrics.counter(
            "genmesh_http_client_disconnects_total",
            "Answers cancelled because their client disconnected before the end",
            ["route"],
        )
        self.first_chunk = metrics.histogram(
            "genmesh_http_time_to_first_chunk_seconds",
            "Time from a streamed (SSE) request's start to its first chunk written",
            LATENCY_BUCKETS,
            ["route"],
        )

        self.sse_open = self.streams.labels("sse")
        self.websockets_open = self.streams.labels("websocket")
        self._routes: dict[str, RouteSeries] = {}

    def route(self, template: str) -> RouteSeries:
        """The series of the route ``template``, looked up once."""
        found = self._routes.get(template)
        if found is None:
            found = self._routes[template] = RouteSeries(self, template)
        return found

    def disconnected(self, route: str) -> None:
        """An answer of ``route`` was cancelled because its client left."""
        self.disconnects.labels(route).inc()


class RouteSeries:
    """The series of one route (``labels()`` costs microseconds: done once per route, not per request)."""

    __slots__ = ("_handled", "_handled_by_code", "_route", "first_chunk", "handling", "in_flight", "started")

    def __init__(self, metrics: HttpMetrics, route: str) -> None:
        self.started = metrics.started.labels(route)
        self.in_flight = metrics.in_flight.labels(route)
        self.handling = metrics.handling.labels(route)
        self.first_chunk = metrics.first_chunk.labels(route)
        self._handled, self._route = metrics.handled, route
        self._handled_by_code: dict[int, Counter] = {}

    def handled(self, status: int) -> Counter:
        found = self._handled_by_code.get(status)
        if found is None:
            found = self._handled_by_code[status] = self._handled.labels(self._route, str(status))
        return found


def instrument(routes: Sequence[BaseRoute], metrics: HttpMetrics) -> None:
    """Record every request each of ``routes`` answers, under its template (wrapping the ASGI app it calls, as
    Starlette's per-route ``middleware`` does): the router has matched it, so recording costs no matching."""
    for route in routes:
        if isinstance(route, Route | WebSocketRoute | Mount):
            route.app = RouteMetrics(route.app, metrics, metrics.route(template(route)))


def template(route: Route | WebSocketRoute | Mount) -> str:
    """The route's path with its parameters' names and without their types: ``/v1/models/{model}``."""
    return route.path_format or "/"


class RouteMetrics:
    """Records each HTTP request and WebSocket of one route's ``app`` in ``series``."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics, series: RouteSeries) -> None:
        self.app, self.metrics, self.series = app, metrics, series

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        series, start = self.series, time.perf_counter()
        series.started.inc()
        series.in_flight.inc()
        websocket = scope["type"] == "websocket"
        status = 403 if websocket else 500  # a socket closed before it was accepted; the app raised
        stream: Gauge | None = self.metrics.websockets_open if websocket else None
        if stream is not None:
            stream.inc()
        first = True

        async def recording_send(message: Message) -> None:
            nonlocal status, stream, first
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"content-type" and value.startswith(_EVENT_STREAM):
                        stream = self.metrics.sse_open
                        stream.inc()
            elif kind == "http.response.body" and first and stream is not None and message.get("body"):
                first = False
                series.first_chunk.observe(time.perf_counter() - start)
            elif kind == "websocket.accept":
                status = 101
            elif kind == "websocket.http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            if stream is not None:
                stream.dec()
            series.in_flight.dec()
            series.handled(status).inc()
            series.handling.observe(time.perf_counter() - start)
