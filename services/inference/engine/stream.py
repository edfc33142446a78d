"""Delivery to the consumer: what the engine thread produced, handed to the event loop in one call per flush."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque

from services.inference.engine.types import Finished, TokenChunk

Item = TokenChunk | Finished | BaseException
"""What a generation stream carries: chunks, then a Finished or an exception to raise."""


class Stream:
    """The consumer's end of one generation (event-loop thread only): unread items, coalesced."""

    def __init__(self) -> None:
        self.pending: deque[Item] = deque()
        self.ready = asyncio.Event()
        self.finished = False

    def push(self, item: Item) -> None:
        """Queue ``item``, merging it into an unread chunk; anything after the last item is dropped."""
        if self.finished:
            return
        last = self.pending[-1] if self.pending else None
        if isinstance(item, TokenChunk) and isinstance(last, TokenChunk):
            last.extend(item)
        else:
            self.pending.append(item)
        if not isinstance(item, TokenChunk):
            self.finished = True
        self.ready.set()


class Outbox:
    """Items the engine thread produced, handed to the event loop in one call per flush.

    One ``call_soon_threadsafe`` per step rather than one per token keeps the engine thread and the
    event loop from trading the GIL for every token of a large batch.
    """

    def __init__(self) -> None:
        self._items: list[tuple[Stream, Item]] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the consumers run on (the engine serves one loop)."""
        self._loop = loop

    def put(self, stream: Stream, item: Item) -> None:
        """Queue ``item`` for ``stream`` until the next flush (any thread)."""
        with self._lock:
            self._items.append((stream, item))

    def flush(self) -> None:
        """Hand everything queued to the loop in one call."""
        with self._lock:
            batch, self._items = self._items, []
        if batch and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening
                self._loop.call_soon_threadsafe(_deliver, batch)


def _deliver(batch: list[tuple[Stream, Item]]) -> None:
    for stream, item in batch:
        stream.push(item)
