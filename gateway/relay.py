"""Producer-consumer relay of a token stream: reads upstream in its own task, merges deltas a slow reader missed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from genmesh.tasks import cancel_and_wait
from genmesh.v1 import inference_pb2


class Unread:
    """The messages a reader has not taken yet, each run of deltas merged into one message, so that a reader who
    falls behind holds one message per run of deltas, not one per token.

    A run's text is kept in pieces and joined when the run is taken: appending to a protobuf string field in
    place keeps every intermediate string in the message's arena (quadratic memory over a long run).
    """

    def __init__(self) -> None:
        self._messages: list[inference_pb2.GenerateResponse] = []
        self._texts: list[str] = []
        """The text pieces of the last message, when it is a delta."""

    def __bool__(self) -> bool:
        return bool(self._messages)

    def push(self, message: inference_pb2.GenerateResponse) -> None:
        """Add ``message``, merged into the last unread one when both are deltas."""
        last = self._messages[-1] if self._messages else None
        if last is not None and last.HasField("delta") and message.HasField("delta"):
            last.delta.token_ids.extend(message.delta.token_ids)
            last.delta.logprobs.extend(message.delta.logprobs)
            self._texts.append(message.delta.text)
            return
        self._join_texts()
        self._messages.append(message)
        self._texts = [message.delta.text] if message.HasField("delta") else []

    def take(self) -> list[inference_pb2.GenerateResponse]:
        """Every unread message, in order; none is left."""
        self._join_texts()
        taken, self._messages, self._texts = self._messages, [], []
        return taken

    def _join_texts(self) -> None:
        if len(self._texts) > 1:
            self._messages[-1].delta.text = "".join(self._texts)


async def relay(call: grpc.aio.UnaryStreamCall) -> AsyncIterator[inference_pb2.GenerateResponse]:
    """Yield ``call``'s messages, coalescing the deltas that pile up while the consumer is busy.

    Reading never waits for the consumer, so upstream flow control is never the bottleneck; what is held
    for a slow consumer is one merged delta (at most the generation's max_tokens tokens) and the
    completion. Closing the iterator cancels the upstream call.
    """
    unread = Unread()
    wake = asyncio.Event()
    failure: list[BaseException] = []
    finished = False

    async def pump() -> None:
        nonlocal finished
        try:
            async for message in call:
                unread.push(message)
                wake.set()
        except grpc.aio.AioRpcError as error:
            failure.append(error)
        finally:
            finished = True
            wake.set()

    reader = asyncio.create_task(pump())
    try:
        while True:
            await wake.wait()
            wake.clear()
            for message in unread.take():
                yield message
            if finished and not unread:
                if failure:
                    raise failure[0]
                return
    finally:
        call.cancel()
        await cancel_and_wait(reader)
