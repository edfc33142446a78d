"""Two in-process services run by genmesh.server.serve, Front calling Back through open_channel, with this
process traced (genmesh.tracing) to a real OTLP receiver, and the log lines of both captured as JSON.

Front (``genmesh.test.Front``): ``Ask`` calls Back's ``Ask`` with the same bytes and answers them.
Back (``genmesh.test.Back``): one method per kind of call (``Ask``, ``Stream``, ``Upload``, ``Chat``), ``Fail``
(an unhandled error: INTERNAL), ``Refuse`` (INVALID_ARGUMENT) and ``Forever`` (streams until cancelled); it
records the trace headers each call arrived with.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from genmesh import tracing
from genmesh.channels import open_channel
from genmesh.errors import InvalidArgument
from genmesh.logs import JsonFormatter
from support.otlp_receiver import OtlpReceiver, ReceivedSpan, running_receiver
from support.served import Hosted, served

FRONT = "genmesh.test.Front"
BACK = "genmesh.test.Back"
TRACE_HEADERS = ("traceparent", "tracestate")
log = logging.getLogger("genmesh.test.traced")


def _service(service_name: str, handlers: dict[str, grpc.RpcMethodHandler]) -> Hosted:
    """A genmesh.server Service that serves ``handlers`` (raw bytes) under ``service_name``."""
    generic = grpc.method_handlers_generic_handler(service_name, handlers)
    return Hosted(service_name, lambda server: server.add_generic_rpc_handlers((generic,)))


@dataclass
class Pair:
    front: str
    back: str
    receiver: OtlpReceiver
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    """(Back's method, the trace headers it got) per call, in order."""
    log_lines: list[dict[str, Any]] = field(default_factory=list)

    async def exported(self, count: int = 0, timeout_s: float = 10.0) -> list[ReceivedSpan]:
        """The spans the receiver holds once every span ended so far has been exported, and at least ``count``
        (spans that end after the call returned, such as a cancelled stream's, are waited for up to ``timeout_s``).
        """
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            assert await asyncio.to_thread(tracing.flush)  # returns once the receiver has taken the spans
            if len(self.receiver.spans) >= count or asyncio.get_running_loop().time() > deadline:
                return list(self.receiver.spans)
            await asyncio.sleep(0.05)

    def rpc_line(self, method: str) -> dict[str, Any]:
        """The one ``rpc`` log line of the last call to ``method`` (``/package.Service/Method``)."""
        return [line for line in self.log_lines if line["msg"] == "rpc" and line.get("method") == method][-1]


def _back(seen: list[tuple[str, dict[str, str]]]) -> Hosted:
    def record(method: str, context: grpc.aio.ServicerContext) -> None:
        metadata = {key: value for key, value in context.invocation_metadata() or () if key in TRACE_HEADERS}
        seen.append((method, metadata))

    async def ask(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        record("Ask", context)
        log.info("back answers")
        return request

    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        record("Stream", context)
        for _ in range(3):
            yield request

    async def upload(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        record("Upload", context)
        return b"".join([request async for request in requests])

    async def chat(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        record("Chat", context)
        async for request in requests:
            yield request

    async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        record("Fail", context)
        raise RuntimeError("a bug in the handler")

    async def refuse(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        record("Refuse", context)
        raise InvalidArgument.field("request", "is refused")

    async def forever(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        record("Forever", context)
        while True:
            yield request
            await asyncio.sleep(0.05)

    return _service(
        BACK,
        {
            "Ask": grpc.unary_unary_rpc_method_handler(ask),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Upload": grpc.stream_unary_rpc_method_handler(upload),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Refuse": grpc.unary_unary_rpc_method_handler(refuse),
            "Forever": grpc.unary_stream_rpc_method_handler(forever),
        },
    )


def _front(channel: grpc.aio.Channel) -> Hosted:
    ask_back = channel.unary_unary(f"/{BACK}/Ask")

    async def ask(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        log.info("front asks back")
        answer: bytes = await ask_back(request, timeout=10)
        return answer

    return _service(FRONT, {"Ask": grpc.unary_unary_rpc_method_handler(ask)})


class _Lines(logging.Handler):
    """Formats each record as it is emitted (inside the RPC, as a stream handler does) and keeps it parsed."""

    def __init__(self, lines: list[dict[str, Any]]) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self._lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self._lines.append(json.loads(self.format(record)))


@asynccontextmanager
async def traced_pair(sample_ratio: float = 1.0, traced: bool = True) -> AsyncIterator[Pair]:
    """Front and Back serving on loopback, this process traced (unless ``traced`` is false) to a receiver."""
    async with AsyncExitStack() as stack:
        receiver = await stack.enter_async_context(running_receiver())
        seen: list[tuple[str, dict[str, str]]] = []
        log_lines: list[dict[str, Any]] = []
        handler = _Lines(log_lines)
        genmesh_log = logging.getLogger("genmesh")
        level = genmesh_log.level
        genmesh_log.setLevel(logging.INFO)  # setLevel also clears the loggers' cached levels
        genmesh_log.addHandler(handler)
        stack.callback(genmesh_log.removeHandler, handler)
        stack.callback(genmesh_log.setLevel, level)
        if traced:
            tracing.install("test", tracing.TraceSettings(receiver.endpoint, sample_ratio))
        stack.push_async_callback(asyncio.to_thread, tracing.shutdown)  # the receiver must still listen
        back = await stack.enter_async_context(served(_back(seen), metrics=False))
        channel = await stack.enter_async_context(open_channel(back.address))  # after install: it traces
        front = await stack.enter_async_context(served(_front(channel), metrics=False))
        yield Pair(front.address, back.address, receiver, seen, log_lines)
