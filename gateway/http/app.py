"""build_app: the Starlette application of the HTTP front, from the list of route modules below.

A route module exposes ``routes(ctx: HttpContext) -> list[BaseRoute]``; add it to ROUTE_MODULES (one line) to
serve it. An unknown ``/v1/`` path or a wrong method is answered in OpenAI's error shape (404, 405 with ``Allow``).
Static files (the web page in gateway/http/static/) are mounted last, at ``/``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.http import openai_embeddings, openai_models, openai_routes, tools_route, websocket
from gateway.http.context import HttpContext, ToolsTarget
from gateway.http.errors import HttpError
from gateway.http.metrics import HttpMetrics, instrument
from genmesh.metrics import Metrics

STATIC_DIR = Path(__file__).with_name("static")

RouteModule = Callable[[HttpContext], list[BaseRoute]]


def _health(ctx: HttpContext) -> list[BaseRoute]:
    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")  # the process answers; the gateway's own health is the gateway's probe

    return [Route("/healthz", healthz, methods=["GET"])]


ROUTE_MODULES: list[RouteModule] = [
    _health,
    openai_routes.routes,
    openai_models.routes,
    openai_embeddings.routes,
    websocket.routes,
    tools_route.routes,
]
"""Each module's routes, in order; the first match wins."""


def _v1_fallback(routes: list[BaseRoute]) -> Route:
    """The last /v1/ route: 405 with ``Allow`` for a path served with other methods, else 404, in OpenAI's shape
    (without it the static files' mount would answer them in plain text)."""

    async def fallback(request: Request) -> Response:
        path = request.url.path
        allowed = sorted(
            method
            for route in routes
            if isinstance(route, Route) and route.methods and route.path_regex.fullmatch(path)
            for method in route.methods
        )
        if allowed:
            message = f"{request.method} is not allowed on {path}"
            return HttpError(405, message, code="method_not_allowed", headers={"Allow": ", ".join(allowed)}).response()
        return HttpError(404, f"no route {request.method} {path}", code="unknown_url").response()

    return Route("/v1/{rest:path}", fallback, methods=_METHODS)


_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def build_app(
    channel: grpc.aio.Channel,
    *,
    model: str = "genmesh",
    tools: ToolsTarget | None = None,
    static_dir: Path | None = STATIC_DIR,
    allowed_origins: frozenset[str] = frozenset(),
    metrics: Metrics | None = None,
) -> Starlette:
    """The HTTP front answering through the gateway at ``channel``; ``model`` is the served model's name,
    ``tools`` the tools service GET /v1/genmesh/tools lists (None: not served), ``allowed_origins`` the browser
    origins allowed on the WebSocket besides the front's own, ``metrics`` where its requests are recorded (None:
    nothing recorded; gateway/http/metrics.py)."""
    http_metrics = None if metrics is None else HttpMetrics(metrics)
    ctx = HttpContext(channel, model=model, tools=tools, allowed_origins=allowed_origins, metrics=http_metrics)
    routes: list[BaseRoute] = [route for module in ROUTE_MODULES for route in module(ctx)]
    routes.append(_v1_fallback(list(routes)))
    if static_dir is not None and static_dir.is_dir():
        routes.append(Mount("/", app=StaticFiles(directory=static_dir, html=True), name="static"))
    if http_metrics is not None:
        instrument(routes, http_metrics)
    app = Starlette(routes=routes)
    app.state.ctx = ctx
    return app
