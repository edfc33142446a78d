"""The WebSocket endpoint ``/v1/ws``: the same answers as /v1/chat/completions, several per socket, one at a time,
each cancellable by a message.

Client messages: ``{"type": "generate", "id": ID, "request": <chat completion body>, "api_key": KEY (optional,
for browsers, which cannot set headers; else the socket's Authorization header)}`` and ``{"type": "cancel", "id":
ID}``. Server messages, each with ``"ref"``: the ``id`` of the request it answers: ``{"type": "chunk",
...chat.completion.chunk}`` (whose own ``id`` is the completion's),
``{"type": "genmesh.sources" | "genmesh.tool_result" | "genmesh.degraded" | "genmesh.timings", "data": {...}}``,
then ``{"type": "done", "finish_reason", "usage"}`` (``finish_reason`` "cancelled" after a cancel) or ``{"type":
"error", "error": {message, type, param, code}, "status": <the HTTP status it would have>}``. Cancelling, or
closing the socket, cancels the gRPC call: inference drops the sequence.

A browser's socket whose ``Origin`` is not the page's own (the ``Host``) nor one of HttpContext.allowed_origins is
refused before the handshake completes (403). Each answer's ``X-Request-Id`` is the handshake's with ``-N``
appended (N counts the socket's answers), so that ids, and the gateway's cancels keyed by them, stay distinct."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import urlsplit

import grpc
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.http import gateway_call
from gateway.http.bodies import refuse_lone_surrogates
from gateway.http.context import HttpContext
from gateway.http.errors import HttpError, http_error
from gateway.http.gateway_call import metadata_of
from gateway.http.openai_chat import parse_request
from gateway.http.openai_models import served_model
from gateway.http.openai_stream import Chunk, Translator
from genmesh.interceptor import MAX_REQUEST_ID_CHARS
from genmesh.tasks import cancel_and_wait

log = logging.getLogger("genmesh.http")
PATH = "/v1/ws"


class _Socket:
    """One connection: its running answer (at most one) and the lock that keeps its messages whole."""

    def __init__(self, ctx: HttpContext, ws: WebSocket) -> None:
        self.ctx, self.ws = ctx, ws
        self.running: tuple[object, asyncio.Task[None]] | None = None
        """The latest answer: the client's ``id`` for it (any JSON value) and its task."""
        self.lock = asyncio.Lock()
        self.answers = 0

    async def send(self, message: dict[str, Any]) -> None:
        async with self.lock:
            await self.ws.send_json(message)

    async def serve(self) -> None:
        try:
            while True:
                received = await self.ws.receive()
                if received["type"] == "websocket.disconnect":
                    return
                text = received.get("text")
                if text is None:
                    await self.error(None, HttpError(400, "messages must be text frames", code="invalid_frame"))
                    continue
                try:
                    message = json.loads(text)
                except (ValueError, TypeError, RecursionError):
                    await self.error(None, HttpError(400, "a message must be a JSON object", code="invalid_json"))
                    continue
                try:
                    refuse_lone_surrogates(message)
                except HttpError as error:
                    await self.error(None, error)
                    continue
                await self.handle(message)
        except WebSocketDisconnect:
            pass
        finally:
            if self.running is not None:
                if not self.running[1].done():
                    self.ctx.disconnected(PATH)
                with contextlib.suppress(Exception):  # generate() logged it; the socket is closing anyway
                    await cancel_and_wait(self.running[1])

    async def handle(self, message: Any) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        rid = message.get("id") if isinstance(message, dict) else None
        if kind == "cancel":
            if self.running is not None and self.running[0] == rid:
                await cancel_and_wait(self.running[1])
            return
        if kind != "generate":
            await self.error(rid, HttpError(400, "type must be generate or cancel", param="type"))
            return
        if self.running is not None and not self.running[1].done():
            await self.error(rid, HttpError(409, "an answer is running on this socket; cancel it or wait", code="busy"))
            return
        if self.ctx.draining:
            await self.error(rid, HttpError(503, "the server is shutting down", "service_unavailable", code="draining"))
            return
        task = asyncio.create_task(self.generate(rid, message))
        self.ctx.answers.add(task)
        task.add_done_callback(self.ctx.answers.discard)
        self.running = (rid, task)

    async def error(self, rid: Any, error: HttpError) -> None:
        await self.send({"type": "error", "ref": rid, "status": error.status, **error.body()})

    async def generate(self, rid: Any, message: dict[str, Any]) -> None:
        headers = dict(self.ws.headers)
        if isinstance(message.get("api_key"), str):
            headers["authorization"] = f"Bearer {message['api_key']}"
        self.answers += 1
        if headers.get("x-request-id"):
            suffix = f"-{self.answers}"
            headers["x-request-id"] = headers["x-request-id"][: MAX_REQUEST_ID_CHARS - len(suffix)] + suffix
        generation = None
        try:
            served = await served_model(self.ctx, metadata_of(headers))
            parsed = parse_request(message.get("request"), chat=True, served_model=served, stream_default=True)
            generation = await gateway_call.start(self.ctx, parsed.request, headers)
            translator = Translator(parsed)
            async for event in generation.events():
                for output in translator.outputs(event):
                    if isinstance(output, Chunk):
                        await self.send({"type": "chunk", "ref": rid, **output.data})
                    else:
                        await self.send({"type": output.name, "ref": rid, "data": output.data})
            await self.send(
                {"type": "done", "ref": rid, "finish_reason": translator.finish_reason, "usage": translator.usage}
            )
        except HttpError as error:
            await self.error(rid, error)
        except grpc.aio.AioRpcError as error:
            await self.error(rid, http_error(error))
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self.send({"type": "done", "ref": rid, "finish_reason": "cancelled", "usage": None})
                )
            raise
        except Exception:
            log.exception("websocket answer %r failed", rid)
            with contextlib.suppress(Exception):
                await self.error(rid, HttpError(500, "the answer failed", "server_error", code="internal_error"))
        finally:
            if generation is not None:
                generation.cancel()


def origin_allowed(ctx: HttpContext, ws: WebSocket) -> bool:
    """Whether the socket's ``Origin`` (absent for non-browser clients) is its ``Host`` or an allowed origin."""
    origin = ws.headers.get("origin")
    if origin is None or origin in ctx.allowed_origins:
        return True
    return urlsplit(origin).netloc.lower() == ws.headers.get("host", "").lower()


async def _endpoint(ctx: HttpContext, ws: WebSocket) -> None:
    if not origin_allowed(ctx, ws):
        await ws.close(code=1008)  # before accept: the handshake is answered 403
        return
    await ws.accept()
    await _Socket(ctx, ws).serve()


def routes(ctx: HttpContext) -> list[BaseRoute]:
    async def endpoint(ws: WebSocket) -> None:
        await _endpoint(ctx, ws)

    return [WebSocketRoute(PATH, endpoint)]
