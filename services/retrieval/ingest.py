"""Ingest: documents checked and chunked, then committed in batches by a resumable IngestSession."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from genmesh.mesh import DEFAULT_COLLECTION
from services.retrieval.catalog import IngestRecord
from services.retrieval.corpus import Chunk, Document, chunk_document, load_python_reference
from services.retrieval.documents import WriteOutcome
from services.retrieval.validation import check_documents

DEMO_INGEST_ID = f"demo:{DEFAULT_COLLECTION}"
"""The ingest id the demo corpus is loaded under (so an interrupted seeding resumes)."""


@dataclass(slots=True)
class Prepared:
    """A document and its chunks, ready to encode and store."""

    document: Document
    chunks: list[Chunk] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class UpsertResult:
    """What an upsert stored."""

    collection: str
    documents: int
    replaced: int
    chunks: int


class IngestSettings(Protocol):
    """How an ingest chunks and how many chunks it commits at once (a RetrieverConfig)."""

    @property
    def chunk_size(self) -> int:
        """Window length of a chunk, in characters."""

    @property
    def chunk_overlap(self) -> int:
        """Characters two neighbouring chunks share."""

    @property
    def ingest_batch_chunks(self) -> int:
        """Pending chunks that trigger a commit."""


class IngestTarget(Protocol):
    """The store an ingest commits to (the Retriever)."""

    @property
    def config(self) -> IngestSettings:
        """Its chunking and batching."""

    async def recorded_progress(self, ingest_id: str) -> IngestRecord | None:
        """What an ingest committed so far, if it ever committed."""

    async def store(self, collection: str, prepared: Sequence[Prepared], progress: IngestRecord | None) -> WriteOutcome:
        """Encode and commit ``prepared`` (with ``progress``) in one transaction."""

    def ingest(self, collection: str, ingest_id: str | None = None, resume: bool = False) -> IngestSession:
        """A bulk load into ``collection``."""


async def prepare(documents: Sequence[Document], size: int, overlap: int) -> list[Prepared]:
    """Chunk ``documents`` (in a worker thread)."""

    def chunk_all() -> list[Prepared]:
        return [Prepared(doc, chunk_document(doc, size, overlap)) for doc in documents]

    return await asyncio.to_thread(chunk_all)


class IngestSession:
    """A resumable bulk load: documents are committed in batches, each with the ingest's progress record.

    With an ``ingest_id``, every batch's transaction also records how many documents (and chunks) this ingest
    has committed and the last document id, so a client whose stream broke reads that progress back
    (``Retriever.ingest_progress``) and sends the rest with ``resume=True``; counts then continue from the
    record. Without ``resume`` they start from zero. Documents not yet committed when the session is
    abandoned are simply not stored.
    """

    def __init__(self, target: IngestTarget, collection: str, ingest_id: str | None, resume: bool) -> None:
        self.collection = collection
        self.ingest_id = ingest_id
        self._target = target
        self._resume = resume
        self._pending: dict[str, Prepared] = {}
        self._pending_chunks = 0
        self._documents = 0
        self._chunks = 0
        self._replaced = 0
        self._last = ""
        self._started = False

    @property
    def progress(self) -> IngestRecord:
        """What this session (with what it resumed) has committed."""
        return IngestRecord(self.ingest_id or "", self.collection, self._documents, self._chunks, self._last, False)

    async def start(self) -> None:
        """Read the progress to resume from (a no-op without ``resume`` or ``ingest_id``)."""
        if self._started:
            return
        self._started = True
        if self._resume and self.ingest_id:
            record = await self._target.recorded_progress(self.ingest_id)
            if record is not None:
                self._documents, self._chunks, self._last = record.documents, record.chunks, record.last_document_id

    async def add(self, documents: Sequence[Document], path: str = "documents") -> None:
        """Check and chunk ``documents``; commit once enough chunks are pending. InvalidArgument names ``path``."""
        await self.start()
        if not documents:
            return
        check_documents(documents, path)
        config = self._target.config
        for p in await prepare(documents, config.chunk_size, config.chunk_overlap):
            earlier = self._pending.pop(p.document.doc_id, None)  # the later version of a repeated id wins
            if earlier is not None:
                self._pending_chunks -= len(earlier.chunks)
                self._documents -= 1
            self._pending[p.document.doc_id] = p
            self._pending_chunks += len(p.chunks)
            self._documents += 1
            self._last = p.document.doc_id
        if self._pending_chunks >= config.ingest_batch_chunks:
            await self._flush(completed=False)

    async def _flush(self, completed: bool) -> None:
        prepared = list(self._pending.values())
        chunks = self._chunks + self._pending_chunks
        record = None
        if self.ingest_id:
            record = IngestRecord(self.ingest_id, self.collection, self._documents, chunks, self._last, completed)
        if not prepared and record is None:
            return
        outcome = await self._target.store(self.collection, prepared, record)
        self._pending.clear()
        self._pending_chunks = 0
        self._chunks = chunks
        self._replaced += outcome.replaced

    async def finish(self) -> IngestRecord:
        """Commit what is pending and mark the ingest completed; returns the final progress."""
        await self.start()
        await self._flush(completed=True)
        return IngestRecord(self.ingest_id or "", self.collection, self._documents, self._chunks, self._last, True)

    async def commit_prepared(self, prepared: Sequence[Prepared]) -> UpsertResult:
        """Store already-checked documents in one transaction (the unary Upsert)."""
        outcome = await self._target.store(self.collection, prepared, None)
        return UpsertResult(self.collection, outcome.documents, outcome.replaced, outcome.chunks)

    @property
    def replaced(self) -> int:
        """Documents that replaced an earlier version, so far."""
        return self._replaced


async def seed_demo(retriever: IngestTarget, progress: Callable[[IngestRecord], None] | None = None) -> bool:
    """Load the Python language reference into the default collection unless a previous seeding completed.

    An interrupted seeding resumes where it stopped. Returns whether anything was loaded.
    """
    record = await retriever.recorded_progress(DEMO_INGEST_ID)
    if record is not None and record.completed:
        return False
    docs = await asyncio.to_thread(load_python_reference)
    done = record.documents if record is not None else 0
    session = retriever.ingest(DEFAULT_COLLECTION, DEMO_INGEST_ID, resume=True)
    await session.start()
    for start in range(done, len(docs), 8):
        await session.add(docs[start : start + 8])
        if progress is not None:
            progress(session.progress)
    final = await session.finish()
    if progress is not None:
        progress(final)
    return True
