"""Collections and the progress records of bulk loads, as stored in SQLite.

Each collection has a ``generation`` that every committed change of its chunks increments, so a FAISS index
can tell whether it is behind. Functions take a connection and leave transactions to the caller.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from services.retrieval.schema import create_fts


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
class IngestRecord:
    """Progress of a resumable bulk load, committed with each batch it wrote."""

    ingest_id: str
    collection: str
    documents: int
    chunks: int
    last_document_id: str
    completed: bool


_COLLECTION_COLUMNS = "id, name, embedder, dim, generation, documents, chunks"


def _collection(row: tuple[int, str, str, int, int, int, int]) -> CollectionRow:
    return CollectionRow(*row)


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
    create_fts(conn, collection_id)
    return CollectionRow(collection_id, name, embedder, dim, 0, 0, 0)


def bump(conn: sqlite3.Connection, collection_id: int, documents: int, chunks: int) -> None:
    """Count a committed change: the generation goes up, the document and chunk counts by the deltas."""
    conn.execute(
        "UPDATE collections SET generation = generation + 1, documents = documents + ?, chunks = chunks + ?"
        " WHERE id = ?",
        (documents, chunks, collection_id),
    )


def set_embedder(conn: sqlite3.Connection, collection_id: int, embedder: str, dim: int) -> None:
    """Record that the collection's vectors are now another embedder's (and bump its generation)."""
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
