"""Producer-consumer relay of a token stream: reads upstream in its own task, merges deltas a slow reader missed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from genmesh.v1 import common_pb2, inference_pb2


def merge_deltas(target: common_pb2.TokenDelta, extra: common_pb2.TokenDelta) -> None:
    """Append ``extra`` to ``target`` in place."""
    target.token_ids.extend(extra.token_ids)
    target.text += extra.text
    target.logprobs.extend(extra.logprobs)


def coalesce(batch: list[inference_pb2.GenerateResponse]) -> list[inference_pb2.GenerateResponse]:
    """Merge runs of consecutive deltas into one message each; other messages pass unchanged."""
    out: list[inference_pb2.GenerateResponse] = []
    for message in batch:
        if out and message.HasField("delta") and out[-1].HasField("delta"):
            merge_deltas(out[-1].delta, message.delta)
        else:
            out.append(message)
    return out


async def relay(call: grpc.aio.UnaryStreamCall) -> AsyncIterator[inference_pb2.GenerateResponse]:
    """Yield ``call``'s messages, coalescing the deltas that pile up while the consumer is busy.

    Reading never waits for the consumer, so upstream flow control is never the bottleneck; what
    is held is at most one generation's tokens (bounded by max_tokens). Closing the iterator
    cancels the upstream call.
    """
    pending: list[inference_pb2.GenerateResponse] = []
    wake = asyncio.Event()
    failure: list[BaseException] = []
    finished = False

    async def pump() -> None:
        nonlocal finished
        try:
            async for message in call:
                pending.append(message)
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
            for message in coalesce(batch) if len(batch) > 1 else batch:
                yield message
            if finished and not pending:
                if failure:
                    raise failure[0]
                return
    finally:
        call.cancel()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
