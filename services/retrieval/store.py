"""The durable store: collections, documents, chunks (with their vectors), metadata and BM25, in one SQLite file.

SQLite runs in WAL mode with ``synchronous=FULL``: a committed write survives a crash of the process or the
machine. Each collection has a ``generation`` that every committed change of its chunks increments, so a
FAISS index can tell whether it is behind. Keyword search is an FTS5 table per collection (so BM25's
statistics are the collection's own) whose rowids are the chunk ids. Functions here take a connection and
leave transactions to the caller; none of them is async.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from services.retrieval.corpus import Chunk
from services.retrieval.lexical import FTS_TOKENIZER, LEXICAL_VERSION, TITLE_WEIGHT, index_terms

Ids = npt.NDArray[np.int64]
Vectors = npt.NDArray[np.float32]
SCHEMA_VERSION = 1
DATABASE_FILE = "retrieval.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS collections (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    embedder TEXT NOT NULL,
    dim INTEGER NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    documents INTEGER NOT NULL DEFAULT 0,
    chunks INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    collection_id INTEGER NOT NULL REFERENCES collections(id),
    doc_id TEXT NOT NULL,
    title TEXT NOT NULL,
    metadata TEXT NOT NULL,
    chars INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (collection_id, doc_id)
);
-- AUTOINCREMENT: a chunk id is never reused, so a FAISS id always means one chunk.
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    text TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks (document_id);
CREATE TABLE IF NOT EXISTS metadata (
    document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (document_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metadata_by_pair ON metadata (key, value);
CREATE TABLE IF NOT EXISTS ingests (
    ingest_id TEXT PRIMARY KEY,
    collection TEXT NOT NULL,
    documents INTEGER NOT NULL,
    chunks INTEGER NOT NULL,
    last_document_id TEXT NOT NULL,
    completed INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class CollectionRow:
    """A collection as stored."""

    id: int
    name: str
    embedder: str
    dim: int
    generation: int
    documents: int
    chunks: int


@dataclass(frozen=True, slots=True)
class DocumentWrite:
    """A document ready to store: its chunks and one vector per chunk."""

    doc_id: str
    title: str
    metadata: Mapping[str, str]
    chars: int
    chunks: Sequence[Chunk]
    vectors: Vectors


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """What a write changed: chunk ids gone, chunk ids (and vectors) added, documents touched."""

    removed_ids: Ids
    added_ids: Ids
    added_vectors: Vectors
    documents: int
    replaced: int
    chunks: int


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """A chunk with its document's id, title and metadata, as a query returns it."""

    id: int
    doc_id: str
    title: str
    text: str
    ordinal: int
    start: int
    end: int
    metadata: dict[str, str]


@dataclass(frozen=True, slots=True)
class IngestRecord:
    """Progress of a resumable bulk load, committed with each batch it wrote."""

    ingest_id: str
    collection: str
    documents: int
    chunks: int
    last_document_id: str
    completed: bool


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, FULL sync, foreign keys on."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class Database:
    """The store's SQLite file and one connection per thread that uses it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection (call once no thread uses them any more)."""
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    def size_bytes(self) -> int:
        """Bytes on disk: the database and its write-ahead log."""
        total = 0
        for suffix in ("", "-wal"):
            file = self.path.with_name(self.path.name + suffix)
            if file.exists():
                total += file.stat().st_size
        return total


def init_schema(conn: sqlite3.Connection) -> None:
    """Create the tables if they are missing; refuse a store written by a newer schema."""
    with transaction(conn):
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise RuntimeError(f"the store has schema version {row[0]}; this genmesh reads {SCHEMA_VERSION}")


def reindex_keywords_if_needed(conn: sqlite3.Connection) -> list[str]:
    """Rebuild every collection's FTS5 table when the store was indexed by another LEXICAL_VERSION.

    Returns the names of the collections re-indexed. Runs in its own write transaction.
    """
    with transaction(conn):
        row = conn.execute("SELECT value FROM meta WHERE key = 'lexical_version'").fetchone()
        if row is not None and row[0] == LEXICAL_VERSION:
            return []
        rebuilt = []
        for collection in list_collections(conn):
            fts = _fts(collection.id)
            conn.execute(f"DROP TABLE IF EXISTS {fts}")
            _create_fts(conn, collection.id)
            rows = conn.execute(
                "SELECT c.id, d.title, c.text FROM chunks c JOIN documents d ON d.id = c.document_id"
                " WHERE d.collection_id = ?",
                (collection.id,),
            ).fetchall()
            conn.executemany(
                f"INSERT INTO {fts} (rowid, title, body) VALUES (?, ?, ?)",
                ((i, index_terms(title), index_terms(text)) for i, title, text in rows),
            )
            rebuilt.append(collection.name)
        conn.execute(
            "INSERT INTO meta VALUES ('lexical_version', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (LEXICAL_VERSION,),
        )
        return rebuilt


def _create_fts(conn: sqlite3.Connection, collection_id: int) -> None:
    conn.execute(f'CREATE VIRTUAL TABLE {_fts(collection_id)} USING fts5(title, body, tokenize = "{FTS_TOKENIZER}")')


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, immediate: bool = True) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` (``immediate=True``, for writes) or ``BEGIN`` ... ``COMMIT``; rolled back on error."""
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _fts(collection_id: int) -> str:
    return f"fts_c{int(collection_id)}"


def _collection(row: tuple[int, str, str, int, int, int, int]) -> CollectionRow:
    return CollectionRow(*row)


_COLLECTION_COLUMNS = "id, name, embedder, dim, generation, documents, chunks"


def get_collection(conn: sqlite3.Connection, name: str) -> CollectionRow | None:
    """The collection called ``name``, if any."""
    row = conn.execute(f"SELECT {_COLLECTION_COLUMNS} FROM collections WHERE name = ?", (name,)).fetchone()
    return _collection(row) if row else None


def get_collection_by_id(conn: sqlite3.Connection, collection_id: int) -> CollectionRow | None:
    """The collection with row id ``collection_id``, if any."""
    row = conn.execute(f"SELECT {_COLLECTION_COLUMNS} FROM collections WHERE id = ?", (collection_id,)).fetchone()
    return _collection(row) if row else None


def list_collections(conn: sqlite3.Connection) -> list[CollectionRow]:
    """Every collection, oldest first."""
    return [_collection(r) for r in conn.execute(f"SELECT {_COLLECTION_COLUMNS} FROM collections ORDER BY id")]


def generation(conn: sqlite3.Connection, collection_id: int) -> int:
    """The collection's current generation (-1 when it does not exist)."""
    row = conn.execute("SELECT generation FROM collections WHERE id = ?", (collection_id,)).fetchone()
    return int(row[0]) if row else -1


def create_collection(conn: sqlite3.Connection, name: str, embedder: str, dim: int) -> CollectionRow:
    """Create an empty collection and its FTS5 table (inside the caller's write transaction)."""
    cursor = conn.execute(
        "INSERT INTO collections (name, embedder, dim, created_at) VALUES (?, ?, ?, ?)",
        (name, embedder, dim, time.time()),
    )
    collection_id = int(cursor.lastrowid or 0)
    _create_fts(conn, collection_id)
    return CollectionRow(collection_id, name, embedder, dim, 0, 0, 0)


def _chunk_ids_of_documents(conn: sqlite3.Connection, document_rows: Sequence[int]) -> list[int]:
    ids: list[int] = []
    for start in range(0, len(document_rows), 500):
        part = document_rows[start : start + 500]
        marks = ",".join("?" * len(part))
        ids.extend(r[0] for r in conn.execute(f"SELECT id FROM chunks WHERE document_id IN ({marks})", part))
    return ids


def _remove_documents(conn: sqlite3.Connection, collection: CollectionRow, document_rows: Sequence[int]) -> list[int]:
    """Delete documents (and their chunks, metadata and FTS rows); returns the removed chunk ids."""
    chunk_ids = _chunk_ids_of_documents(conn, document_rows)
    fts = _fts(collection.id)
    conn.executemany(f"DELETE FROM {fts} WHERE rowid = ?", ((i,) for i in chunk_ids))
    conn.executemany("DELETE FROM documents WHERE id = ?", ((d,) for d in document_rows))
    return chunk_ids


def _bump(conn: sqlite3.Connection, collection_id: int, documents: int, chunks: int) -> None:
    conn.execute(
        "UPDATE collections SET generation = generation + 1, documents = documents + ?, chunks = chunks + ?"
        " WHERE id = ?",
        (documents, chunks, collection_id),
    )


def upsert_documents(
    conn: sqlite3.Connection, collection: CollectionRow, documents: Sequence[DocumentWrite]
) -> WriteOutcome:
    """Insert documents, replacing those whose id exists (old chunks go), and bump the generation.

    Runs inside the caller's write transaction. Document ids must be distinct within ``documents``.
    """
    now = time.time()
    fts = _fts(collection.id)
    existing: list[int] = []
    for doc in documents:
        row = conn.execute(
            "SELECT id FROM documents WHERE collection_id = ? AND doc_id = ?", (collection.id, doc.doc_id)
        ).fetchone()
        if row:
            existing.append(int(row[0]))
    removed = _remove_documents(conn, collection, existing) if existing else []
    added_ids: list[int] = []
    vectors: list[Vectors] = []
    chunk_count = 0
    for doc in documents:
        cursor = conn.execute(
            "INSERT INTO documents (collection_id, doc_id, title, metadata, chars, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (collection.id, doc.doc_id, doc.title, json.dumps(dict(doc.metadata), sort_keys=True), doc.chars, now),
        )
        document_row = int(cursor.lastrowid or 0)
        conn.executemany(
            "INSERT INTO metadata (document_id, key, value) VALUES (?, ?, ?)",
            ((document_row, key, value) for key, value in doc.metadata.items()),
        )
        title_terms = index_terms(doc.title)
        for chunk, vector in zip(doc.chunks, doc.vectors, strict=True):
            cursor = conn.execute(
                'INSERT INTO chunks (document_id, ordinal, start, "end", text, vector) VALUES (?, ?, ?, ?, ?, ?)',
                (document_row, chunk.ordinal, chunk.start, chunk.end, chunk.text, vector.astype(np.float32).tobytes()),
            )
            chunk_id = int(cursor.lastrowid or 0)
            conn.execute(
                f"INSERT INTO {fts} (rowid, title, body) VALUES (?, ?, ?)",
                (chunk_id, title_terms, index_terms(chunk.text)),
            )
            added_ids.append(chunk_id)
        vectors.append(doc.vectors.astype(np.float32, copy=False))
        chunk_count += len(doc.chunks)
    _bump(conn, collection.id, len(documents) - len(existing), chunk_count - len(removed))
    return WriteOutcome(
        removed_ids=np.asarray(removed, dtype=np.int64),
        added_ids=np.asarray(added_ids, dtype=np.int64),
        added_vectors=np.concatenate(vectors) if vectors else np.zeros((0, collection.dim), np.float32),
        documents=len(documents),
        replaced=len(existing),
        chunks=chunk_count,
    )


def _filtered_documents_sql(filters: Mapping[str, str]) -> tuple[str, list[str]]:
    """``AND d.id IN (...)`` clauses restricting documents ``d`` to those whose metadata has every pair."""
    clauses = []
    params: list[str] = []
    for key, value in sorted(filters.items()):
        clauses.append(" AND d.id IN (SELECT document_id FROM metadata WHERE key = ? AND value = ?)")
        params += [key, value]
    return "".join(clauses), params


def delete_documents(
    conn: sqlite3.Connection,
    collection: CollectionRow,
    doc_ids: Sequence[str] = (),
    filters: Mapping[str, str] | None = None,
) -> WriteOutcome:
    """Delete the documents with these ids, or those matching every metadata pair of ``filters``.

    Runs inside the caller's write transaction; the generation is bumped when anything was deleted.
    """
    rows: list[int] = []
    if doc_ids:
        for doc_id in doc_ids:
            row = conn.execute(
                "SELECT id FROM documents WHERE collection_id = ? AND doc_id = ?", (collection.id, doc_id)
            ).fetchone()
            if row:
                rows.append(int(row[0]))
    elif filters:
        where, params = _filtered_documents_sql(filters)
        rows = [
            int(r[0])
            for r in conn.execute(
                f"SELECT d.id FROM documents d WHERE d.collection_id = ?{where}", [collection.id, *params]
            )
        ]
    removed = _remove_documents(conn, collection, rows) if rows else []
    if rows:
        _bump(conn, collection.id, -len(rows), -len(removed))
    return WriteOutcome(
        removed_ids=np.asarray(removed, dtype=np.int64),
        added_ids=np.zeros(0, dtype=np.int64),
        added_vectors=np.zeros((0, collection.dim), dtype=np.float32),
        documents=len(rows),
        replaced=0,
        chunks=len(removed),
    )


def collection_vectors(conn: sqlite3.Connection, collection: CollectionRow) -> tuple[Ids, Vectors]:
    """Every chunk id of the collection and its vector (what a FAISS index is rebuilt from)."""
    ids: list[int] = []
    blobs: list[bytes] = []
    for chunk_id, blob in conn.execute(
        "SELECT c.id, c.vector FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.collection_id = ?"
        " ORDER BY c.id",
        (collection.id,),
    ):
        ids.append(int(chunk_id))
        blobs.append(blob)
    if not ids:
        return np.zeros(0, dtype=np.int64), np.zeros((0, collection.dim), dtype=np.float32)
    vectors = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), -1)
    return np.asarray(ids, dtype=np.int64), vectors


def collection_chunk_ids(conn: sqlite3.Connection, collection_id: int, filters: Mapping[str, str] | None = None) -> Ids:
    """The collection's chunk ids, optionally only those of documents matching every pair of ``filters``."""
    where, params = _filtered_documents_sql(filters or {})
    rows = conn.execute(
        f"SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.collection_id = ?{where}",
        [collection_id, *params],
    )
    return np.fromiter((r[0] for r in rows), dtype=np.int64)


def bm25_search(
    conn: sqlite3.Connection,
    collection_id: int,
    match: str,
    limit: int,
    filters: Mapping[str, str] | None = None,
) -> list[tuple[int, float]]:
    """The best ``limit`` chunk ids for an FTS5 ``match`` expression with their BM25 score (larger is better)."""
    fts = _fts(collection_id)
    sql = f"SELECT rowid, -bm25({fts}, {TITLE_WEIGHT}, 1.0) AS score FROM {fts} WHERE {fts} MATCH ?"
    params: list[object] = [match]
    if filters:
        where, extra = _filtered_documents_sql(filters)
        sql += f" AND rowid IN (SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id WHERE 1{where})"
        params += extra
    sql += " ORDER BY score DESC, rowid LIMIT ?"
    params.append(limit)
    return [(int(i), float(s)) for i, s in conn.execute(sql, params)]


def fetch_chunks(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, StoredChunk]:
    """The chunks with these ids that still exist, by id."""
    found: dict[int, StoredChunk] = {}
    for start in range(0, len(ids), 500):
        part = list(ids[start : start + 500])
        marks = ",".join("?" * len(part))
        for row in conn.execute(
            'SELECT c.id, d.doc_id, d.title, c.text, c.ordinal, c.start, c."end", d.metadata'
            f" FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id IN ({marks})",
            part,
        ):
            found[int(row[0])] = StoredChunk(
                int(row[0]), row[1], row[2], row[3], int(row[4]), int(row[5]), int(row[6]), json.loads(row[7])
            )
    return found


def chunks_to_embed(conn: sqlite3.Connection, collection_id: int) -> Iterator[tuple[int, str, str]]:
    """``(chunk id, title, text)`` of every chunk of the collection (for re-embedding with another model)."""
    yield from conn.execute(
        "SELECT c.id, d.title, c.text FROM chunks c JOIN documents d ON d.id = c.document_id"
        " WHERE d.collection_id = ? ORDER BY c.id",
        (collection_id,),
    )


def replace_vectors(
    conn: sqlite3.Connection, collection_id: int, ids: Ids, vectors: Vectors, embedder: str, dim: int
) -> None:
    """Store new vectors for chunks and record the embedder that made them (inside a write transaction)."""
    conn.executemany(
        "UPDATE chunks SET vector = ? WHERE id = ?",
        ((v.astype(np.float32).tobytes(), int(i)) for i, v in zip(ids, vectors, strict=True)),
    )
    conn.execute(
        "UPDATE collections SET embedder = ?, dim = ?, generation = generation + 1 WHERE id = ?",
        (embedder, dim, collection_id),
    )


def get_ingest(conn: sqlite3.Connection, ingest_id: str) -> IngestRecord | None:
    """The progress recorded for ``ingest_id``, if any."""
    row = conn.execute(
        "SELECT ingest_id, collection, documents, chunks, last_document_id, completed FROM ingests WHERE ingest_id = ?",
        (ingest_id,),
    ).fetchone()
    return IngestRecord(row[0], row[1], int(row[2]), int(row[3]), row[4], bool(row[5])) if row else None


def put_ingest(conn: sqlite3.Connection, record: IngestRecord) -> None:
    """Record ingest progress (inside the write transaction of the batch it describes)."""
    conn.execute(
        "INSERT INTO ingests (ingest_id, collection, documents, chunks, last_document_id, completed, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (ingest_id) DO UPDATE SET collection = excluded.collection,"
        " documents = excluded.documents, chunks = excluded.chunks, last_document_id = excluded.last_document_id,"
        " completed = excluded.completed, updated_at = excluded.updated_at",
        (
            record.ingest_id,
            record.collection,
            record.documents,
            record.chunks,
            record.last_document_id,
            int(record.completed),
            time.time(),
        ),
    )
