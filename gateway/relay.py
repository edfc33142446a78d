"""Producer-consumer relay of a token stream: reads upstream in its own task, merges deltas a slow reader missed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from genmesh.tasks import cancel_and_wait
from genmesh.v1 import common_pb2, inference_pb2


def merge_deltas(target: common_pb2.TokenDelta, extra: common_pb2.TokenDelta) -> None:
    """Append ``extra`` to ``target`` in place."""
    target.token_ids.extend(extra.token_ids)
    target.text += extra.text
    target.logprobs.extend(extra.logprobs)


def push(pending: list[inference_pb2.GenerateResponse], message: inference_pb2.GenerateResponse) -> None:
    """Append ``message`` to the unread ``pending`` messages, merged into the last one when both are deltas,
    so that a reader who falls behind holds one message per run of deltas, not one per token."""
    if pending and message.HasField("delta") and pending[-1].HasField("delta"):
        merge_deltas(pending[-1].delta, message.delta)
    else:
        pending.append(message)


async def relay(call: grpc.aio.UnaryStreamCall) -> AsyncIterator[inference_pb2.GenerateResponse]:
    """Yield ``call``'s messages, coalescing the deltas that pile up while the consumer is busy.

    Reading never waits for the consumer, so upstream flow control is never the bottleneck; what is held
    for a slow consumer is one merged delta (at most the generation's max_tokens tokens) and the
    completion. Closing the iterator cancels the upstream call.
    """
    pending: list[inference_pb2.GenerateResponse] = []
    wake = asyncio.Event()
    failure: list[BaseException] = []
    finished = False

    async def pump() -> None:
        nonlocal finished
        try:
            async for message in call:
                push(pending, message)
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
            batch = pending[:]
            pending.clear()
            for message in batch:
                yield message
            if finished and not pending:
                if failure:
                    raise failure[0]
                return
    finally:
        call.cancel()
        await cancel_and_wait(reader)
