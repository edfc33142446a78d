"""AsyncClient: the gateway's Generate as typed events, whole answers, and the job API, over one channel."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar, Unpack

import grpc

from genmesh.channels import open_channel
from genmesh.client.errors import client_error
from genmesh.client.events import Answer, Event, answer_of, event_of
from genmesh.client.jobs import AsyncJobs
from genmesh.client.requests import GenerateOptions, Message, RequestOptions, gateway_request
from genmesh.client.retry import DEFAULT_RETRY, RetryPolicy, deadline_of, left_s
from genmesh.tls import ClientTLS
from genmesh.v1 import gateway_pb2_grpc, jobs_pb2_grpc

Reply = TypeVar("Reply")


class AsyncClient:
    """A client of a genmesh gateway at ``target`` (``host:port``): plaintext, or TLS with ``tls``; with
    ``api_key``, every call sends ``authorization: Bearer <key>``. ``timeout_s`` is every call's deadline in seconds
    unless the call gives its own (None: none); ``retry`` says when a refused call is made again. Use it as an
    ``async with`` block, or call ``close``."""

    def __init__(
        self,
        target: str,
        *,
        tls: ClientTLS | None = None,
        api_key: str = "",
        timeout_s: float | None = 60.0,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self.channel = open_channel(target, tls=tls, api_key=api_key)
        self.timeout_s = timeout_s
        self.retry = retry
        self._gateway = gateway_pb2_grpc.GatewayServiceStub(self.channel)
        self.jobs = AsyncJobs(jobs_pb2_grpc.JobServiceStub(self.channel), self._unary)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def generate(
        self,
        question: str = "",
        messages: Sequence[Message] = (),
        *,
        timeout_s: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> AsyncIterator[Event]:
        """The events of answering ``question`` (or the conversation ``messages``; ``options``: RequestOptions):
        Sources and each ToolResult, then Delta after Delta, then Complete. With ``tools`` (ToolSpec: tool names,
        function declarations) the gateway runs the agent loop (``tool_choice``, at most ``max_steps``
        generations, ``parallel_tool_calls``): per step Deltas and ToolCalls, then StepEnd, then the results of the
        calls it ran; a step that calls client functions ends the stream with finish reason ``tool_calls`` (run
        them, then send the messages again with ``answer.continuation_messages()`` and one ``tool`` message per
        call). ``timeout_s``: this call's deadline (None: the client's). A refusal before the first event
        (RESOURCE_EXHAUSTED, UNAVAILABLE) is retried per ``retry``, with the same request id; once an event
        arrived, a failure is raised, never retried (the answer would repeat). Closing the stream (``aclose``, or
        leaving the loop) cancels the call and its downstream work."""
        request = gateway_request(question, messages, **options)
        request.request_id = request.request_id or uuid.uuid4().hex
        deadline = deadline_of(self.timeout_s if timeout_s is None else timeout_s)
        attempt = 0
        while True:
            attempt += 1
            call = self._gateway.Generate(request, timeout=left_s(deadline))
            received = False
            try:
                async for proto in call:
                    received = True
                    event = event_of(proto)
                    if event is not None:
                        yield event
                return
            except grpc.aio.AioRpcError as error:
                delay = None if received else self.retry.delay_s(error, attempt, deadline)
                if delay is None:
                    raise client_error(error) from None
            finally:
                call.cancel()
            await asyncio.sleep(delay)

    async def answer(
        self, question: str = "", messages: Sequence[Message] = (), **options: Unpack[GenerateOptions]
    ) -> Answer:
        """The whole answer of ``generate`` (same arguments): text, sources, tool results, usage and timings."""
        return answer_of([event async for event in self.generate(question, messages, **options)])

    async def _unary(
        self, method: Callable[..., Awaitable[Reply]], request: Any, timeout_s: float | None, idempotent: bool
    ) -> Reply:
        """``method(request)`` within the deadline, retried per ``retry``: RESOURCE_EXHAUSTED always (nothing was
        done), UNAVAILABLE only when the call is ``idempotent``."""
        deadline = deadline_of(self.timeout_s if timeout_s is None else timeout_s)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await method(request, timeout=left_s(deadline))
            except grpc.aio.AioRpcError as error:
                delay = self.retry.delay_s(error, attempt, deadline, unavailable=idempotent)
                if delay is None:
                    raise client_error(error) from None
            await asyncio.sleep(delay)


__all__ = ["AsyncClient"]
