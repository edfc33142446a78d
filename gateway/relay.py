"""Producer-consumer relay of a token stream: reads upstream in its own task, merges deltas a slow reader missed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from genmesh.tasks import cancel_and_wait
from genmesh.v1 import inference_pb2


class Unread:
    """The messages a reader has not taken yet, each sample's (``index``) run of deltas merged into one message,
    so that a reader who falls behind holds one message per run of deltas, not one per token.

    With n > 1 the samples' deltas interleave (0, 1, 0, 1, ...), so each sample keeps its own open run: a delta
    merges into its sample's open run wherever that sits, and any other message of the sample (its completion)
    closes the run. Messages of different samples may so reorder; those of one sample keep their order.

    A run's text is kept in pieces and joined when the run is taken: appending to a protobuf string field in
    place keeps every intermediate string in the message's arena (quadratic memory over a long run).
    """

    def __init__(self) -> None:
        self._messages: list[inference_pb2.GenerateResponse] = []
        self._open: dict[int, int] = {}
        """Sample index -> position in ``_messages`` of the sample's open run of deltas."""
        self._texts: dict[int, list[str]] = {}
        """Position in ``_messages`` of a run of deltas -> its text pieces."""

    def __bool__(self) -> bool:
        return bool(self._messages)

    def push(self, message: inference_pb2.GenerateResponse) -> None:
        """Add ``message``, merged into its sample's open run when it is a delta."""
        if not message.HasField("delta"):
            self._open.pop(message.index, None)
            self._messages.append(message)
            return
        at = self._open.get(message.index)
        if at is not None:
            run = self._messages[at].delta
            run.token_ids.extend(message.delta.token_ids)
            run.logprobs.extend(message.delta.logprobs)
            self._texts[at].append(message.delta.text)
            return
        self._open[message.index] = len(self._messages)
        self._texts[len(self._messages)] = [message.delta.text]
        self._messages.append(message)

    def take(self) -> list[inference_pb2.GenerateResponse]:
        """Every unread message, in order; none is left."""
        for at, pieces in self._texts.items():
            if len(pieces) > 1:
                self._messages[at].delta.text = "".join(pieces)
        taken, self._messages, self._open, self._texts = self._messages, [], {}, {}
        return taken


async def relay(call: grpc.aio.UnaryStreamCall) -> AsyncIterator[inference_pb2.GenerateResponse]:
    """Yield ``call``'s messages, coalescing the deltas that pile up while the consumer is busy.

    Reading never waits for the consumer, so upstream flow control is never the bottleneck; what is held
    for a slow consumer is one merged delta per sample (at most the generation's max_tokens tokens each) and
    the completions. Closing the iterator cancels the upstream call.
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
