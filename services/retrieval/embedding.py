"""Embeddings for clients (RetrievalService.Embed, behind the gateway's EmbeddingService): texts checked, then
encoded in the embedder's thread, concurrent calls' texts sharing forward passes (a MicroBatcher of their own,
so that they never hold up a query batch for longer than one pass), with a bound on the texts waiting."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Executor

import numpy as np
import numpy.typing as npt

from genmesh.embeddings import embed_violations
from genmesh.errors import InvalidArgument, ResourceExhausted
from services.retrieval.batcher import MicroBatcher
from services.retrieval.embedder import Embedder

MAX_QUEUED_TEXTS = 4096
"""Texts that may wait for the embedder at once; past it RESOURCE_EXHAUSTED."""
RETRY_AFTER_S = 1.0

Vector = npt.NDArray[np.float32]


class TextEmbeddings:
    """Encodes clients' texts with ``embedder`` in ``executor`` (the retriever's encoder thread)."""

    def __init__(
        self,
        embedder: Embedder,
        executor: Executor,
        *,
        window_s: float,
        max_batch: int,
        max_queued: int = MAX_QUEUED_TEXTS,
    ) -> None:
        self.embedder = embedder
        self._batcher: MicroBatcher[str, tuple[Vector, int]] = MicroBatcher(
            self._encode, executor, window_s=window_s, max_batch=max_batch
        )
        self._max_queued = max_queued
        self.queued = 0
        """Texts submitted and not yet encoded."""

    async def embed(self, inputs: Sequence[str], dimensions: int | None) -> tuple[list[Vector], list[int]]:
        """Each input's unit vector and token count, in order. InvalidArgument naming the field for bad input,
        ResourceExhausted when the texts would not fit in the queue."""
        if bad := embed_violations(inputs, dimensions, self.embedder.dim):
            raise InvalidArgument(bad)
        if self.queued + len(inputs) > self._max_queued:
            raise ResourceExhausted(
                f"the embedder has {self.queued} texts waiting (at most {self._max_queued}); retry shortly",
                RETRY_AFTER_S,
                metadata={"queuedTexts": str(self.queued)},
            )
        self.queued += len(inputs)
        try:
            rows = await asyncio.gather(*(self._batcher.submit(text) for text in inputs))
        finally:
            self.queued -= len(inputs)
        return [vector for vector, _ in rows], [tokens for _, tokens in rows]

    def _encode(self, texts: Sequence[str]) -> list[tuple[Vector, int]]:
        """One batch, in the encoder thread: vectors and token counts (the tokenizer is not thread-safe either)."""
        vectors = self.embedder.encode(texts)
        return list(zip(list(vectors), self.embedder.count_tokens(texts), strict=True))

    async def close(self) -> None:
        """Stop the batcher; waiting callers get CancelledError."""
        await self._batcher.close()
