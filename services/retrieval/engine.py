"""The Retriever: durable collections with hybrid (dense + BM25) search, behind an asyncio API.

Blocking work runs in threads: encoding in one encoder thread (queries are micro-batched into it), SQLite
writes in one writer thread, searches in a small pool of reader threads, each with its own connection.
A write commits to SQLite before it is acknowledged and before the in-memory FAISS index changes; the index
records the collection generation it reflects and is rebuilt from SQLite whenever it is found behind (after
a crash, or when another process wrote to the same data directory). Never imports grpc or protobuf.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from genmesh.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from services.retrieval import store
from services.retrieval.batcher import BatchStats, MicroBatcher
from services.retrieval.corpus import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    DEMO_COLLECTION,
    Chunk,
    Document,
    chunk_document,
    load_python_reference,
    validate_chunking,
)
from services.retrieval.embedder import Embedder, Vectors
from services.retrieval.lexical import match_expression
from services.retrieval.search import candidate_depth, reciprocal_rank_fusion
from services.retrieval.store import IngestRecord, transaction
from services.retrieval.validation import (
    QueryParams,
    SearchMode,
    check_documents,
    collection_violations,
    metadata_violations,
)
from services.retrieval.vectors import (
    IndexOptions,
    VectorIndex,
    find_index_file,
    write_index_file,
)

log = logging.getLogger("genmesh.retrieval")
T = TypeVar("T")

DEMO_INGEST_ID = "demo:python-reference"
"""The ingest id the demo corpus is loaded under (so an interrupted seeding resumes)."""
ENCODE_BATCH = 32
"""Texts per forward pass when ingesting; queries can slip in between two of them."""


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
class Hit:
    """One ranked passage of a query result; ``rank`` counts from 1, ``score`` is in the mode's scale."""

    chunk_id: str
    document_id: str
    title: str
    text: str
    score: float
    rank: int
    start: int
    end: int
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class UpsertResult:
    """What an upsert stored."""

    collection: str
    documents: int
    replaced: int
    chunks: int


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


@dataclass(slots=True)
class _Prepared:
    document: Document
    chunks: list[Chunk] = field(default_factory=list)


class Retriever:
    """Collections of chunked documents in SQLite + FAISS; ``open`` before use, ``close`` after."""

    def __init__(self, config: RetrieverConfig, embedder: Embedder) -> None:
        self.config = config
        self.embedder = embedder
        self._db = store.Database(config.data_dir / store.DATABASE_FILE)
        self._vector_dir = config.data_dir / "vectors"
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix="retrieval-encode")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="retrieval-write")
        self._readers = ThreadPoolExecutor(config.read_threads, thread_name_prefix="retrieval-read")
        self._indexes: dict[int, VectorIndex] = {}
        self._indexes_lock = threading.Lock()
        self._known: set[str] = set()
        self._batcher: MicroBatcher[str, Vectors] | None = None
        self._checkpointer: asyncio.Task[None] | None = None

    # --- life cycle ------------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create or open the store; bring every collection's vectors and index up to date with SQLite."""
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self._batcher = MicroBatcher(
            self._encode_queries,
            self._encoder,
            window_s=self.config.batch_window_ms / 1000.0,
            max_batch=self.config.max_batch,
        )
        await self._write(store.init_schema)
        reindexed = await self._write(store.reindex_keywords_if_needed)
        if reindexed:
            log.info("keyword index rebuilt for a new tokenizer", extra={"collections": ",".join(reindexed)})
        collections = await self._write(store.list_collections)
        for collection in collections:
            if collection.embedder != self.embedder.name or collection.dim != self.embedder.dim:
                await self._reembed(collection)
            await self._write(functools.partial(self._load_index, collection_id=collection.id))
        # The first forward passes of a shape are slow (kernel selection); pay for them before serving.
        for size in (1, 4, 16):
            await self._encode(["warming up the embedder"] * size)
        self._checkpointer = asyncio.create_task(self._checkpoint_every(self.config.checkpoint_interval_s))

    async def close(self) -> None:
        """Save the indexes that changed, stop the threads, close the store."""
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
        if self._batcher is not None:
            await self._batcher.close()
        with contextlib.suppress(Exception):
            await self.checkpoint()
        for pool in (self._encoder, self._writer, self._readers):
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

    # --- vector indexes --------------------------------------------------------------------------------------

    def _index(self, collection_id: int, dim: int) -> VectorIndex:
        with self._indexes_lock:
            index = self._indexes.get(collection_id)
            if index is None or index.dim != dim:
                index = self._indexes[collection_id] = VectorIndex(dim, self.config.index, generation=-1)
            return index

    def _rebuild(self, conn: sqlite3.Connection, index: VectorIndex, collection_id: int) -> None:
        """Reload the index from SQLite (caller holds ``index.lock``); one read snapshot for ids and generation."""
        with transaction(conn, immediate=False):
            collection = store.get_collection_by_id(conn, collection_id)
            if collection is None:
                return
            ids, vectors = store.collection_vectors(conn, collection)
        started = time.perf_counter()
        index.reset(ids, vectors, collection.generation)
        log.info(
            "vector index rebuilt from the store",
            extra={
                "collection": collection.name,
                "vectors": len(ids),
                "generation": collection.generation,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )

    def _sync(self, conn: sqlite3.Connection, index: VectorIndex, collection_id: int) -> None:
        """Rebuild the index if SQLite has another generation (caller holds ``index.lock``)."""
        if index.generation != store.generation(conn, collection_id):
            self._rebuild(conn, index, collection_id)

    def _load_index(self, conn: sqlite3.Connection, collection_id: int) -> None:
        """At start-up: the saved index if it matches SQLite exactly, else a rebuild (then saved)."""
        collection = store.get_collection_by_id(conn, collection_id)
        if collection is None:
            return
        index = self._index(collection.id, collection.dim)
        path = find_index_file(self._vector_dir, collection.id, self.config.index.kind, collection.generation)
        if path is not None:
            live = store.collection_chunk_ids(conn, collection.id)
            loaded = VectorIndex.deserialize(
                path.read_bytes(), collection.dim, self.config.index, collection.generation, live
            )
            if loaded is not None:
                with self._indexes_lock:
                    self._indexes[collection.id] = loaded
                log.info(
                    "vector index loaded",
                    extra={"collection": collection.name, "vectors": loaded.size, "file": path.name},
                )
                return
        with index.lock:
            self._rebuild(conn, index, collection.id)
        self._save(index, collection.id)

    def _save(self, index: VectorIndex, collection_id: int) -> None:
        with index.lock:
            if not index.dirty:
                return
            data, generation = index.serialize(), index.generation
            index.dirty = False
        write_index_file(self._vector_dir, collection_id, self.config.index.kind, generation, data)

    async def checkpoint(self) -> None:
        """Write every index that changed since it was last saved (atomically, named by its generation)."""
        with self._indexes_lock:
            indexes = list(self._indexes.items())
        for collection_id, index in indexes:
            if index.dirty:
                await asyncio.get_running_loop().run_in_executor(self._writer, self._save, index, collection_id)

    async def _checkpoint_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.checkpoint()
            except Exception:
                log.exception("saving the vector indexes failed; they will be rebuilt from SQLite if needed")

    async def _reembed(self, collection: store.CollectionRow) -> None:
        """Encode a collection's chunks again with this embedder (it was built with another model)."""
        log.info(
            "re-embedding a collection made with another embedder",
            extra={"collection": collection.name, "was": collection.embedder, "now": self.embedder.name},
        )
        rows = await self._read(lambda conn: list(store.chunks_to_embed(conn, collection.id)))
        ids = np.asarray([r[0] for r in rows], dtype=np.int64)
        vectors = await self._encode([f"{title}\n{text}" for _, title, text in rows])

        def commit(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                store.replace_vectors(conn, collection.id, ids, vectors, self.embedder.name, self.embedder.dim)

        await self._write(commit)

    # --- encoding --------------------------------------------------------------------------------------------

    def _encode_queries(self, texts: Sequence[str]) -> list[Vectors]:
        vectors = self.embedder.encode(texts)
        return [vectors[i] for i in range(len(texts))]

    async def _encode(self, texts: Sequence[str]) -> Vectors:
        """Encode many texts in the encoder thread, a slice at a time so that queries interleave."""
        loop = asyncio.get_running_loop()
        parts = [
            await loop.run_in_executor(self._encoder, self.embedder.encode, texts[i : i + ENCODE_BATCH])
            for i in range(0, len(texts), ENCODE_BATCH)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.embedder.dim), dtype=np.float32)

    # --- queries ---------------------------------------------------------------------------------------------

    async def _require(self, name: str) -> None:
        """NotFound unless the collection exists (remembered once seen: collections are never dropped)."""
        if name in self._known:
            return
        if await self._read(lambda conn: store.get_collection(conn, name)) is None:
            raise NotFound(f"collection {name!r} does not exist")
        self._known.add(name)

    async def query(self, params: QueryParams) -> list[Hit]:
        """The ``top_k`` best passages for a checked query, best first; NotFound for an unknown collection."""
        await self._require(params.collection)
        vector = None
        if params.mode is not SearchMode.BM25:
            assert self._batcher is not None, "open() the retriever first"
            vector = await self._batcher.submit(params.text)
        return await self._read(lambda conn: self._search(conn, params, vector))

    def _search(self, conn: sqlite3.Connection, params: QueryParams, vector: Vectors | None) -> list[Hit]:
        collection = store.get_collection(conn, params.collection)
        if collection is None:
            raise NotFound(f"collection {params.collection!r} does not exist")
        hybrid = params.mode is SearchMode.HYBRID
        depth = candidate_depth(params.top_k, hybrid)
        dense: list[tuple[int, float]] = []
        lexical: list[tuple[int, float]] = []
        if vector is not None:
            index = self._index(collection.id, collection.dim)
            with index.lock:
                self._sync(conn, index, collection.id)
                allowed = store.collection_chunk_ids(conn, collection.id, params.filters) if params.filters else None
                dense = index.search(vector, depth, allowed)
        if params.mode is not SearchMode.DENSE:
            match = match_expression(params.text)
            if match is not None:
                lexical = store.bm25_search(conn, collection.id, match, depth, params.filters)
        if hybrid:
            ranked = reciprocal_rank_fusion([[i for i, _ in dense], [i for i, _ in lexical]])
        else:
            ranked = dense or lexical
        if params.min_score is not None:
            ranked = [(i, s) for i, s in ranked if s >= params.min_score]
        # Rows deleted since the index answered are skipped; a few spare candidates make up for them.
        wanted = ranked[: params.top_k + 16]
        rows = store.fetch_chunks(conn, [i for i, _ in wanted])
        hits: list[Hit] = []
        for chunk_id, score in wanted:
            row = rows.get(chunk_id)
            if row is None:
                continue
            hits.append(
                Hit(
                    chunk_id=f"{row.doc_id}#{row.ordinal}",
                    document_id=row.doc_id,
                    title=row.title,
                    text=row.text,
                    score=score,
                    rank=len(hits) + 1,
                    start=row.start,
                    end=row.end,
                    metadata=row.metadata,
                )
            )
            if len(hits) == params.top_k:
                break
        return hits

    # --- writes ----------------------------------------------------------------------------------------------

    def ingest(self, collection: str, ingest_id: str | None = None, resume: bool = False) -> IngestSession:
        """A bulk load into ``collection`` that commits every ``ingest_batch_chunks`` chunks (see IngestSession)."""
        bad = collection_violations(collection)
        if ingest_id is not None and not 1 <= len(ingest_id) <= 256:
            bad.append(FieldViolation("ingest_id", "must be 1-256 characters"))
        if bad:
            raise InvalidArgument(bad)
        return IngestSession(self, collection, ingest_id, resume)

    async def upsert(self, collection: str, documents: Sequence[Document]) -> UpsertResult:
        """Store ``documents`` in ``collection`` (created if new) in one transaction; same ids are replaced."""
        session = self.ingest(collection)
        check_documents(documents)
        prepared = await self._prepare(documents)
        return await session.commit_prepared(prepared)

    async def _prepare(self, documents: Sequence[Document]) -> list[_Prepared]:
        size, overlap = self.config.chunk_size, self.config.chunk_overlap

        def chunk_all() -> list[_Prepared]:
            return [_Prepared(doc, chunk_document(doc, size, overlap)) for doc in documents]

        return await asyncio.to_thread(chunk_all)

    async def _store(
        self, collection: str, prepared: Sequence[_Prepared], progress: IngestRecord | None
    ) -> store.WriteOutcome:
        """Encode, then commit in one write transaction, then update the in-memory index."""
        texts = [f"{p.document.title}\n{c.text}" for p in prepared for c in p.chunks]
        vectors = await self._encode(texts)
        writes: list[store.DocumentWrite] = []
        offset = 0
        for p in prepared:
            n = len(p.chunks)
            writes.append(
                store.DocumentWrite(
                    p.document.doc_id,
                    p.document.title,
                    p.document.metadata,
                    len(p.document.text),
                    p.chunks,
                    vectors[offset : offset + n],
                )
            )
            offset += n

        def commit(conn: sqlite3.Connection) -> store.WriteOutcome:
            conn.execute("BEGIN IMMEDIATE")
            try:
                found = store.get_collection(conn, collection)
                if found is None:
                    found = store.create_collection(conn, collection, self.embedder.name, self.embedder.dim)
                    self._index(found.id, found.dim).generation = found.generation
                elif found.embedder != self.embedder.name:
                    raise FailedPrecondition(
                        f"collection {collection!r} holds vectors of {found.embedder}; this service embeds with "
                        f"{self.embedder.name} (restart it to re-embed the collection)"
                    )
                outcome = store.upsert_documents(conn, found, writes) if writes else None
                if progress is not None:
                    store.put_ingest(conn, progress)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._commit_and_apply(conn, found, outcome)
            return outcome or _empty_outcome(found.dim)

        outcome = await self._write(commit)
        self._known.add(collection)
        return outcome

    def _commit_and_apply(
        self, conn: sqlite3.Connection, collection: store.CollectionRow, outcome: store.WriteOutcome | None
    ) -> None:
        """COMMIT, then apply the change to the index, under the index lock so no search sees one without the other."""
        index = self._index(collection.id, collection.dim)
        with index.lock:
            conn.execute("COMMIT")
            if outcome is None:
                return
            if index.generation == collection.generation:
                index.remove(outcome.removed_ids)
                index.add(outcome.added_ids, outcome.added_vectors)
                index.generation = collection.generation + 1
                if index.needs_rebuild:
                    self._rebuild(conn, index, collection.id)
            else:  # the index was behind already (another process wrote): take it all from SQLite
                self._rebuild(conn, index, collection.id)

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

        def delete(conn: sqlite3.Connection) -> store.WriteOutcome:
            conn.execute("BEGIN IMMEDIATE")
            try:
                found = store.get_collection(conn, collection)
                if found is None:
                    raise NotFound(f"collection {collection!r} does not exist")
                outcome = store.delete_documents(conn, found, document_ids, filters)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._commit_and_apply(conn, found, outcome if outcome.documents else None)
            return outcome

        outcome = await self._write(delete)
        return DeleteResult(outcome.documents, outcome.chunks)

    # --- stats and progress ----------------------------------------------------------------------------------

    async def stats(self, collection: str | None = None) -> list[CollectionStats]:
        """Sizes of every collection (or just ``collection``; NotFound if it does not exist)."""

        def read(conn: sqlite3.Connection) -> list[CollectionStats]:
            rows = store.list_collections(conn)
            if collection:
                rows = [r for r in rows if r.name == collection]
                if not rows:
                    raise NotFound(f"collection {collection!r} does not exist")
            result = []
            for row in rows:
                index = self._index(row.id, row.dim)
                with index.lock:
                    self._sync(conn, index, row.id)
                    vectors, nbytes = index.size, index.nbytes
                result.append(
                    CollectionStats(
                        row.name,
                        row.documents,
                        row.chunks,
                        vectors,
                        index.kind.value,
                        nbytes,
                        row.embedder,
                        row.dim,
                        row.generation,
                    )
                )
            return result

        return await self._read(read)

    def store_bytes(self) -> int:
        """Size of the SQLite store on disk."""
        return self._db.size_bytes()

    async def ingest_progress(self, ingest_id: str) -> IngestRecord:
        """What an ingest committed so far; NotFound for an unknown id."""
        if not 1 <= len(ingest_id) <= 256:
            raise InvalidArgument.field("ingest_id", "must be 1-256 characters")
        record = await self._read(lambda conn: store.get_ingest(conn, ingest_id))
        if record is None:
            raise NotFound(f"no ingest {ingest_id!r}")
        return record

    async def seed_demo(self, progress: Callable[[IngestRecord], None] | None = None) -> bool:
        """Load the Python language reference into ``python-reference`` unless a previous seeding completed.

        An interrupted seeding resumes where it stopped. Returns whether anything was loaded.
        """
        record = await self._read(lambda conn: store.get_ingest(conn, DEMO_INGEST_ID))
        if record is not None and record.completed:
            return False
        documents = await asyncio.to_thread(load_python_reference)
        done = record.documents if record is not None else 0
        session = self.ingest(DEMO_COLLECTION, DEMO_INGEST_ID, resume=True)
        await session.start()
        for start in range(done, len(documents), 8):
            await session.add(documents[start : start + 8])
            if progress is not None:
                progress(session.progress)
        final = await session.finish()
        if progress is not None:
            progress(final)
        return True


def _empty_outcome(dim: int) -> store.WriteOutcome:
    return store.WriteOutcome(
        np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros((0, dim), np.float32), 0, 0, 0
    )


class IngestSession:
    """A resumable bulk load: documents are committed in batches, each with the ingest's progress record.

    With an ``ingest_id``, every batch's transaction also records how many documents (and chunks) this ingest
    has committed and the last document id, so a client whose stream broke reads that progress back
    (``Retriever.ingest_progress``) and sends the rest with ``resume=True``; counts then continue from the
    record. Without ``resume`` they start from zero. Documents not yet committed when the session is
    abandoned are simply not stored.
    """

    def __init__(self, retriever: Retriever, collection: str, ingest_id: str | None, resume: bool) -> None:
        self.collection = collection
        self.ingest_id = ingest_id
        self._retriever = retriever
        self._resume = resume
        self._pending: dict[str, _Prepared] = {}
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
            ingest_id = self.ingest_id
            record = await self._retriever._read(lambda conn: store.get_ingest(conn, ingest_id))
            if record is not None:
                self._documents, self._chunks, self._last = record.documents, record.chunks, record.last_document_id

    async def add(self, documents: Sequence[Document], path: str = "documents") -> None:
        """Check and chunk ``documents``; commit once enough chunks are pending. InvalidArgument names ``path``."""
        await self.start()
        if not documents:
            return
        check_documents(documents, path)
        for p in await self._retriever._prepare(documents):
            earlier = self._pending.pop(p.document.doc_id, None)  # the later version of a repeated id wins
            if earlier is not None:
                self._pending_chunks -= len(earlier.chunks)
                self._documents -= 1
            self._pending[p.document.doc_id] = p
            self._pending_chunks += len(p.chunks)
            self._documents += 1
            self._last = p.document.doc_id
        if self._pending_chunks >= self._retriever.config.ingest_batch_chunks:
            await self._flush(completed=False)

    async def _flush(self, completed: bool) -> None:
        prepared = list(self._pending.values())
        chunks = self._chunks + self._pending_chunks
        record = None
        if self.ingest_id:
            record = IngestRecord(self.ingest_id, self.collection, self._documents, chunks, self._last, completed)
        if not prepared and record is None:
            return
        outcome = await self._retriever._store(self.collection, prepared, record)
        self._pending.clear()
        self._pending_chunks = 0
        self._chunks = chunks
        self._replaced += outcome.replaced

    async def finish(self) -> IngestRecord:
        """Commit what is pending and mark the ingest completed; returns the final progress."""
        await self.start()
        await self._flush(completed=True)
        return IngestRecord(self.ingest_id or "", self.collection, self._documents, self._chunks, self._last, True)

    async def commit_prepared(self, prepared: Sequence[_Prepared]) -> UpsertResult:
        """Store already-checked documents in one transaction (the unary Upsert)."""
        outcome = await self._retriever._store(self.collection, prepared, None)
        return UpsertResult(self.collection, outcome.documents, outcome.replaced, outcome.chunks)

    @property
    def replaced(self) -> int:
        """Documents that replaced an earlier version, so far."""
        return self._replaced
