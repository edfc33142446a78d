"""The Retriever: durable collections with hybrid (dense + BM25) search, behind an asyncio API.

Blocking work runs in threads. Dense and hybrid queries are micro-batched: a batch is encoded in one forward
pass in the encoder thread, then searched in one pass over the store (query.py) in a reader thread while the
encoder goes on with the next batch. BM25-only queries, which need no encoding, and other reads go straight to
the reader threads; SQLite writes run in one writer thread; each thread has its own connection. Ingest encodes
in the encoder thread too, a slice at a time, so that query batches interleave.
A write commits to SQLite before it is acknowledged and before the in-memory FAISS index changes (indexes.py).
Never imports grpc or protobuf.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from genmesh.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound, quote
from genmesh.tasks import cancel_and_wait
from services.retrieval import catalog, documents
from services.retrieval.batcher import BatchStats, MicroBatcher
from services.retrieval.catalog import CollectionRow, IngestRecord
from services.retrieval.corpus import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    Document,
    validate_chunking,
)
from services.retrieval.documents import DocumentWrite, WriteOutcome
from services.retrieval.embedder import Embedder, Vectors
from services.retrieval.indexes import IndexCache
from services.retrieval.ingest import IngestSession, Prepared, UpsertResult, prepare
from services.retrieval.metrics import RetrievalMetrics
from services.retrieval.query import Hit, run_queries
from services.retrieval.schema import DATABASE_FILE, Database, init_schema, reindex_keywords_if_needed, transaction
from services.retrieval.validation import (
    QueryParams,
    SearchMode,
    check_documents,
    collection_violations,
    metadata_violations,
)
from services.retrieval.vectors import IndexOptions, use_search_threads

log = logging.getLogger("genmesh.retrieval")
T = TypeVar("T")
Answers = list[list[Hit] | NotFound]

ENCODE_BATCH = 32
"""Texts per forward pass when ingesting; query batches can slip in between two of them."""


@dataclass(frozen=True, slots=True)
class RetrieverConfig:
    """Where the store lives and how the retriever chunks, indexes, batches and commits."""

    data_dir: Path
    chunk_size: int = DEFAULT_CHUNK_SIZE
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP
    index: IndexOptions = field(default_factory=IndexOptions)
    batch_window_ms: float = 2.0
    max_batch: int = 64
    read_threads: int = 4
    ingest_batch_chunks: int = 64
    checkpoint_interval_s: float = 30.0

    def __post_init__(self) -> None:
        try:
            validate_chunking(self.chunk_size, self.chunk_overlap)
        except InvalidArgument as error:
            raise ValueError(f"bad chunking configuration: {error.message}") from error
        if not 0 <= self.batch_window_ms <= 1000:
            raise ValueError(f"batch_window_ms must lie in [0, 1000], got {self.batch_window_ms}")
        if not 1 <= self.max_batch <= 4096:
            raise ValueError(f"max_batch must lie in [1, 4096], got {self.max_batch}")
        if not 1 <= self.read_threads <= 64:
            raise ValueError(f"read_threads must lie in [1, 64], got {self.read_threads}")
        if self.ingest_batch_chunks < 1:
            raise ValueError("ingest_batch_chunks must be >= 1")
        if not self.checkpoint_interval_s > 0:
            raise ValueError("checkpoint_interval_s must be > 0")


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """What a delete removed."""

    documents: int
    chunks: int


@dataclass(frozen=True, slots=True)
class CollectionStats:
    """Size of one collection and of its vector index."""

    name: str
    documents: int
    chunks: int
    vectors: int
    index_kind: str
    index_bytes: int
    embedder: str
    dim: int
    generation: int


class Retriever:
    """Collections of chunked documents in SQLite + FAISS; ``open`` before use, ``close`` after."""

    def __init__(self, config: RetrieverConfig, embedder: Embedder, metrics: RetrievalMetrics | None = None) -> None:
        self.config = config
        self.embedder = embedder
        self._metrics = metrics
        self._db = Database(config.data_dir / DATABASE_FILE)
        self._indexes = IndexCache(config.data_dir / "vectors", config.index, metrics)
        self.encoder = ThreadPoolExecutor(1, thread_name_prefix="retrieval-encode")  # the embedder's one thread
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="retrieval-write")
        self._readers = ThreadPoolExecutor(
            config.read_threads,
            thread_name_prefix="retrieval-read",
            initializer=use_search_threads,  # FAISS's OpenMP thread count is per calling thread
            initargs=(config.index.search_threads,),
        )
        self._known: set[str] = set()
        self._batcher: MicroBatcher[QueryParams, tuple[Future[Answers], int]] | None = None
        self._checkpointer: asyncio.Task[None] | None = None

    # --- life cycle ------------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create or open the store; bring every collection's vectors and index up to date with SQLite."""
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self._batcher = MicroBatcher(
            self._encode_and_search,
            self.encoder,
            window_s=self.config.batch_window_ms / 1000.0,
            max_batch=self.config.max_batch,
            observe=None if self._metrics is None else self._metrics.batched,
        )
        await self._write(init_schema)
        reindexed = await self._write(reindex_keywords_if_needed)
        if reindexed:
            log.info("keyword index rebuilt for a new tokenizer", extra={"collections": ",".join(reindexed)})
        for collection in await self._write(catalog.list_collections):
            if collection.embedder != self.embedder.name or collection.dim != self.embedder.dim:
                await self._reembed(collection)
            await self._write(functools.partial(self._indexes.load, collection_id=collection.id))
        # The first forward passes of a shape are slow (kernel selection); pay for them before serving.
        for size in (1, 4, 16):
            await self._encode(["warming up the embedder"] * size)
        self._checkpointer = asyncio.create_task(self._checkpoint_every(self.config.checkpoint_interval_s))

    async def close(self) -> None:
        """Save the indexes that changed, stop the threads, close the store."""
        await cancel_and_wait(self._checkpointer)
        if self._batcher is not None:
            await self._batcher.close()
        with contextlib.suppress(Exception):
            await self.checkpoint()
        for pool in (self.encoder, self._writer, self._readers):
            pool.shutdown(wait=True, cancel_futures=True)
        self._db.close()

    @property
    def batch_stats(self) -> BatchStats:
        """How queries were batched into forward passes so far."""
        return self._batcher.stats if self._batcher is not None else BatchStats()

    async def _run(self, pool: ThreadPoolExecutor, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            return work(self._db.connection())

        return await asyncio.get_running_loop().run_in_executor(pool, call)

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(self._writer, work)

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(self._readers, work)

    async def checkpoint(self) -> None:
        """Write every index that changed since it was last saved (atomically, named by its generation)."""
        for collection_id in self._indexes.changed():
            await asyncio.get_running_loop().run_in_executor(self._writer, self._indexes.save, collection_id)

    async def _checkpoint_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.checkpoint()
            except Exception:
                log.exception("saving the vector indexes failed; they will be rebuilt from SQLite if needed")

    async def _reembed(self, collection: CollectionRow) -> None:
        """Encode a collection's chunks again with this embedder (it was built with another model)."""
        log.info(
            "re-embedding a collection made with another embedder",
            extra={"collection": collection.name, "was": collection.embedder, "now": self.embedder.name},
        )
        rows = await self._read(lambda conn: list(documents.chunks_to_embed(conn, collection.id)))
        ids = np.asarray([r[0] for r in rows], dtype=np.int64)
        vectors = await self._encode([f"{title}\n{text}" for _, title, text in rows])

        def commit(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                documents.replace_vectors(conn, collection.id, ids, vectors, self.embedder.name, self.embedder.dim)

        await self._write(commit)

    async def _encode(self, texts: Sequence[str]) -> Vectors:
        """Encode many texts in the encoder thread, a slice at a time so that query batches interleave."""
        loop = asyncio.get_running_loop()
        parts = [
            await loop.run_in_executor(self.encoder, self.embedder.encode, texts[i : i + ENCODE_BATCH])
            for i in range(0, len(texts), ENCODE_BATCH)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.embedder.dim), dtype=np.float32)

    # --- queries ---------------------------------------------------------------------------------------------

    async def _require(self, name: str) -> None:
        """NotFound unless the collection exists (remembered once seen: collections are never dropped)."""
        if name in self._known:
            return
        if await self._read(lambda conn: catalog.get_collection(conn, name)) is None:
            raise NotFound(f"collection {quote(name)} does not exist")
        self._known.add(name)

    async def query(self, params: QueryParams) -> list[Hit]:
        """The ``top_k`` best passages for a checked query, best first; NotFound for an unknown collection.

        Dense and hybrid queries join the micro-batch (with the window off, a batch of one); BM25-only
        queries need no forward pass and run in a reader thread at once.
        """
        started = time.perf_counter()
        await self._require(params.collection)
        if params.mode is SearchMode.BM25:
            result = await self._read(lambda conn: run_queries(conn, self._indexes, [params], [None])[0])
        else:
            assert self._batcher is not None, "open() the retriever first"
            search, position = await self._batcher.submit(params)
            # Shielded: a caller that gives up must not cancel the search its batch-mates wait for.
            result = (await asyncio.shield(asyncio.wrap_future(search)))[position]
        if isinstance(result, NotFound):
            raise result
        if self._metrics is not None:
            self._metrics.queried(params.mode, time.perf_counter() - started)
        return result

    def _encode_and_search(self, batch: Sequence[QueryParams]) -> list[tuple[Future[Answers], int]]:
        """A micro-batch, in the encoder thread: one forward pass, then the whole batch's search handed to a
        reader thread (one hop per batch), so that the encoder can start on the next batch."""
        vectors = list(self.embedder.encode([params.text for params in batch]))
        search = self._readers.submit(lambda: run_queries(self._db.connection(), self._indexes, batch, vectors))
        return [(search, position) for position in range(len(batch))]

    # --- writes ----------------------------------------------------------------------------------------------

    def ingest(self, collection: str, ingest_id: str | None = None, resume: bool = False) -> IngestSession:
        """A bulk load into ``collection`` that commits every ``ingest_batch_chunks`` chunks (see IngestSession)."""
        bad = collection_violations(collection)
        if ingest_id is not None and not 1 <= len(ingest_id) <= 256:
            bad.append(FieldViolation("ingest_id", "must be 1-256 characters"))
        if bad:
            raise InvalidArgument(bad)
        return IngestSession(self, collection, ingest_id, resume)

    async def upsert(self, collection: str, docs: Sequence[Document]) -> UpsertResult:
        """Store ``docs`` in ``collection`` (created if new) in one transaction; same ids are replaced."""
        session = self.ingest(collection)
        check_documents(docs)
        prepared = await prepare(docs, self.config.chunk_size, self.config.chunk_overlap)
        return await session.commit_prepared(prepared)

    async def store(self, collection: str, prepared: Sequence[Prepared], progress: IngestRecord | None) -> WriteOutcome:
        """Encode, then commit in one write transaction (with ``progress``), then update the in-memory index."""
        vectors = await self._encode([f"{p.document.title}\n{c.text}" for p in prepared for c in p.chunks])
        writes: list[DocumentWrite] = []
        offset = 0
        for p in prepared:
            n = len(p.chunks)
            doc = p.document
            writes.append(
                DocumentWrite(
                    doc.doc_id, doc.title, doc.metadata, len(doc.text), p.chunks, vectors[offset : offset + n]
                )
            )
            offset += n

        def commit(conn: sqlite3.Connection) -> WriteOutcome:
            conn.execute("BEGIN IMMEDIATE")
            try:
                found = catalog.get_collection(conn, collection)
                if found is None:
                    found = catalog.create_collection(conn, collection, self.embedder.name, self.embedder.dim)
                    self._indexes.get(found.id, found.dim).generation = found.generation
                elif found.embedder != self.embedder.name:
                    raise FailedPrecondition(
                        f"collection {quote(collection)} holds vectors of {found.embedder}; this service embeds with "
                        f"{self.embedder.name} (restart it to re-embed the collection)"
                    )
                outcome = documents.upsert_documents(conn, found, writes) if writes else None
                if progress is not None:
                    catalog.put_ingest(conn, progress)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._indexes.commit_and_apply(conn, found, outcome)
            return outcome or documents.empty_outcome(found.dim)

        outcome = await self._write(commit)
        self._known.add(collection)
        if self._metrics is not None:
            self._metrics.ingested(len(vectors), sum(len(p.document.text.encode()) for p in prepared))
        return outcome

    async def delete(
        self, collection: str, document_ids: Sequence[str] = (), filters: Mapping[str, str] | None = None
    ) -> DeleteResult:
        """Delete documents by id, or every document whose metadata matches all ``filters`` (not both)."""
        bad = collection_violations(collection)
        if bool(document_ids) == bool(filters):
            bad.append(FieldViolation("document_ids", "give either document_ids or filters (exactly one)"))
        bad += metadata_violations(filters or {}, "filters")
        for i, doc_id in enumerate(document_ids):
            if not doc_id.strip():
                bad.append(FieldViolation(f"document_ids[{i}]", "must not be empty"))
        if bad:
            raise InvalidArgument(bad)
        await self._require(collection)

        def delete(conn: sqlite3.Connection) -> WriteOutcome:
            conn.execute("BEGIN IMMEDIATE")
            try:
                found = catalog.get_collection(conn, collection)
                if found is None:
                    raise NotFound(f"collection {quote(collection)} does not exist")
                outcome = documents.delete_documents(conn, found, document_ids, filters)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._indexes.commit_and_apply(conn, found, outcome if outcome.documents else None)
            return outcome

        outcome = await self._write(delete)
        return DeleteResult(outcome.documents, outcome.chunks)

    # --- stats and progress ----------------------------------------------------------------------------------

    async def stats(self, collection: str | None = None) -> list[CollectionStats]:
        """Sizes of every collection (or just ``collection``; NotFound if it does not exist)."""

        def read(conn: sqlite3.Connection) -> list[CollectionStats]:
            rows = catalog.list_collections(conn)
            if collection:
                rows = [r for r in rows if r.name == collection]
                if not rows:
                    raise NotFound(f"collection {quote(collection)} does not exist")
            result = []
            for row in rows:
                index = self._indexes.get(row.id, row.dim)
                with index.lock:
                    self._indexes.sync(conn, index, row.id)
                    vectors, nbytes = index.size, index.nbytes
                counts = (row.name, row.documents, row.chunks, vectors, index.kind.value, nbytes)
                result.append(CollectionStats(*counts, row.embedder, row.dim, row.generation))
            return result

        return await self._read(read)

    def store_bytes(self) -> int:
        """Size of the SQLite store on disk."""
        return self._db.size_bytes()

    async def recorded_progress(self, ingest_id: str) -> IngestRecord | None:
        """What an ingest committed so far, if it ever committed."""
        return await self._read(lambda conn: catalog.get_ingest(conn, ingest_id))

    async def ingest_progress(self, ingest_id: str) -> IngestRecord:
        """What an ingest committed so far; InvalidArgument for a malformed id, NotFound for an unknown one."""
        if not 1 <= len(ingest_id) <= 256:
            raise InvalidArgument.field("ingest_id", "must be 1-256 characters")
        record = await self.recorded_progress(ingest_id)
        if record is None:
            raise NotFound(f"no ingest {quote(ingest_id)}")
        return record
