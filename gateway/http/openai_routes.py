"""POST /v1/chat/completions and POST /v1/completions: OpenAI's API over the gateway's Generate, streamed as
server-sent events or answered whole. A client that disconnects cancels the gRPC call at once (not at the next
token), so inference drops the sequence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from gateway.http import gateway_call
from gateway.http.bodies import read_json
from gateway.http.context import HttpContext
from gateway.http.errors import HttpError, http_error
from gateway.http.gateway_call import metadata_of
from gateway.http.openai_chat import ParsedRequest, parse_request
from gateway.http.openai_models import served_model
from gateway.http.openai_stream import Extra, Translator, sse, sse_error
from genmesh.tasks import cancel_and_wait

T = TypeVar("T")


CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"


class Disconnected(Exception):
    """The HTTP client went away."""


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """The result of ``work``, or Disconnected (``work`` cancelled) as soon as the client disconnects."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnect(receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise Disconnected
    finally:
        await cancel_and_wait(task, watch)


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStream(Response):
    """``text/event-stream`` of ``chunks``; cancels ``generation`` (the gRPC call) when the stream ends, the client
    disconnects (then calls ``on_disconnect``), or the response fails before the first chunk."""

    def __init__(
        self,
        generation: gateway_call.Generation,
        chunks: AsyncGenerator[bytes, None],
        on_disconnect: Callable[[], None] = lambda: None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        self.generation, self.chunks, self.on_disconnect = generation, chunks, on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await until_disconnect(receive, self._pump(send))
        except (Disconnected, OSError):
            self.on_disconnect()
        finally:
            self.generation.cancel()
            await self.chunks.aclose()

    async def _pump(self, send: Send) -> None:
        async for chunk in self.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _sse(generation: gateway_call.Generation, parsed: ParsedRequest) -> AsyncGenerator[bytes, None]:
    translator = Translator(parsed)
    try:
        async for event in generation.events():
            for output in translator.outputs(event):
                if parsed.named_events or not isinstance(output, Extra):
                    yield sse(output)
    except grpc.aio.AioRpcError as error:
        yield sse_error(http_error(error, parsed.names).body())
    finally:
        generation.cancel()
    yield sse(None)


async def _whole(generation: gateway_call.Generation, parsed: ParsedRequest) -> dict[str, Any]:
    translator = Translator(parsed)
    try:
        async for event in generation.events():
            translator.outputs(event)
    finally:
        generation.cancel()
    return translator.whole()


def _handler(ctx: HttpContext, chat: bool) -> Callable[[Request], Awaitable[Response]]:
    route = CHAT_PATH if chat else COMPLETIONS_PATH

    def disconnected() -> None:
        ctx.disconnected(route)

    async def endpoint(request: Request) -> Response:
        try:
            body = await read_json(request)
            try:
                served = await served_model(ctx, metadata_of(request.headers))
            except grpc.aio.AioRpcError as error:
                raise http_error(error) from None
            parsed = parse_request(body, chat=chat, served_model=served)
            try:
                generation = await until_disconnect(
                    request.receive, gateway_call.start(ctx, parsed.request, request.headers)
                )
                if parsed.stream:
                    return EventStream(generation, _sse(generation, parsed), disconnected)
                return JSONResponse(await until_disconnect(request.receive, _whole(generation, parsed)))
            except grpc.aio.AioRpcError as error:
                raise http_error(error, parsed.names) from None
        except HttpError as error:
            return error.response()
        except Disconnected:
            disconnected()
            return Response(status_code=499)

    return endpoint


def routes(ctx: HttpContext) -> list[BaseRoute]:
    return [
        Route(CHAT_PATH, _handler(ctx, chat=True), methods=["POST"]),
        Route(COMPLETIONS_PATH, _handler(ctx, chat=False), methods=["POST"]),
    ]
