"""The document repository: documents, their chunks (with vectors), metadata and FTS5 rows, in SQLite.

Functions take a connection and leave transactions to the caller; writes bump the collection's generation.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from services.retrieval.catalog import CollectionRow, bump, set_embedder
from services.retrieval.corpus import Chunk
from services.retrieval.lexical import TITLE_WEIGHT, index_terms
from services.retrieval.schema import fts_table
from services.retrieval.vectors import Ids, Vectors


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
    fts = fts_table(collection.id)
    conn.executemany(f"DELETE FROM {fts} WHERE rowid = ?", ((i,) for i in chunk_ids))
    conn.executemany("DELETE FROM documents WHERE id = ?", ((d,) for d in document_rows))
    return chunk_ids


def upsert_documents(
    conn: sqlite3.Connection, collection: CollectionRow, documents: Sequence[DocumentWrite]
) -> WriteOutcome:
    """Insert documents, replacing those whose id exists (old chunks go), and bump the generation.

    Runs inside the caller's write transaction. Document ids must be distinct within ``documents``.
    """
    now = time.time()
    fts = fts_table(collection.id)
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
    bump(conn, collection.id, len(documents) - len(existing), chunk_count - len(removed))
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
        bump(conn, collection.id, -len(rows), -len(removed))
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
    fts = fts_table(collection_id)
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
    set_embedder(conn, collection_id, embedder, dim)


def empty_outcome(dim: int) -> WriteOutcome:
    """A write that changed nothing."""
    return WriteOutcome(
        np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros((0, dim), np.float32), 0, 0, 0
    )
