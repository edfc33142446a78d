"""One Generate call to the gateway for an HTTP or WebSocket request: the caller's ``Authorization`` and
``X-Request-Id`` passed on as gRPC metadata (checked first: a header gRPC cannot carry is a 400 naming it), the
events before the first token held back until it comes (so that a refusal raised after retrieval's sources, such
as inference's queue being full, is still an HTTP status and not a broken stream), and cancellation that reaches
inference."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import grpc

from gateway.http.context import HttpContext
from gateway.http.errors import HttpError
from genmesh.interceptor import REQUEST_ID_RULE, valid_request_id
from genmesh.v1 import gateway_pb2

PASSED_HEADERS = ("authorization", "x-request-id")
"""Request headers sent on to the gateway as metadata of the same name."""
HEADER_NAMES = {"authorization": "Authorization", "x-request-id": "X-Request-Id"}
HELD_EVENTS = frozenset({"sources", "tool_result", "degraded"})
"""Events held back by start() until the first other event (a token, the completion), the call's end or error."""
_PRINTABLE = re.compile(r"[\x20-\x7e]*")


@dataclass(slots=True)
class Generation:
    """A started Generate call, the events start() read (the held ones, then the first token or completion), and
    whether the call already ended."""

    call: grpc.aio.UnaryStreamCall
    read: list[gateway_pb2.GatewayEvent]
    ended: bool = False

    async def events(self) -> AsyncIterator[gateway_pb2.GatewayEvent]:
        """Every event, those start() read first; AioRpcError when the call fails."""
        for event in self.read:
            yield event
        if self.ended:
            return
        while True:
            event = await self.call.read()
            if event is grpc.aio.EOF:
                return
            yield event

    def cancel(self) -> None:
        """Cancel the call: the gateway cancels its stages and inference drops the sequence."""
        self.call.cancel()


def metadata_of(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """The gRPC metadata of a request's headers; HttpError 400 naming a header gRPC cannot carry."""
    metadata = []
    for name in PASSED_HEADERS:
        value = headers.get(name)
        if not value:
            continue
        if name == "x-request-id" and not valid_request_id(value):
            raise HttpError(400, f"X-Request-Id {REQUEST_ID_RULE}", param="X-Request-Id", code="invalid_header")
        if not _PRINTABLE.fullmatch(value):
            label = HEADER_NAMES[name]
            raise HttpError(400, f"{label} must be printable ASCII", param=label, code="invalid_header")
        metadata.append((name, value))
    return metadata


async def start(ctx: HttpContext, request: gateway_pb2.GatewayRequest, headers: Mapping[str, str]) -> Generation:
    """Start Generate and read up to its first token or completion; AioRpcError when the gateway refuses before
    it (the call is done), HttpError for a header gRPC cannot carry."""
    call = ctx.gateway.Generate(request, metadata=metadata_of(headers))
    read: list[gateway_pb2.GatewayEvent] = []
    try:
        while True:
            event = await call.read()
            if event is grpc.aio.EOF:
                return Generation(call, read, ended=True)
            read.append(event)
            if event.WhichOneof("event") not in HELD_EVENTS:
                return Generation(call, read)
    except BaseException:
        call.cancel()
        raise
