"""The store's SQLite file: its schema and migrations, connections (one per thread) and transactions.

SQLite runs in WAL mode with ``synchronous=FULL``: a committed write survives a crash of the process or the
machine. Keyword search is an FTS5 table per collection (so BM25's statistics are the collection's own) whose
rowids are the chunk ids.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from services.retrieval.lexical import FTS_TOKENIZER, LEXICAL_VERSION, index_terms

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


def fts_table(collection_id: int) -> str:
    """The name of a collection's FTS5 table."""
    return f"fts_c{int(collection_id)}"


def create_fts(conn: sqlite3.Connection, collection_id: int) -> None:
    """Create a collection's (empty) FTS5 table."""
    conn.execute(
        f'CREATE VIRTUAL TABLE {fts_table(collection_id)} USING fts5(title, body, tokenize = "{FTS_TOKENIZER}")'
    )


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
        for collection_id, name in conn.execute("SELECT id, name FROM collections ORDER BY id").fetchall():
            fts = fts_table(collection_id)
            conn.execute(f"DROP TABLE IF EXISTS {fts}")
            create_fts(conn, collection_id)
            rows = conn.execute(
                "SELECT c.id, d.title, c.text FROM chunks c JOIN documents d ON d.id = c.document_id"
                " WHERE d.collection_id = ?",
                (collection_id,),
            ).fetchall()
            conn.executemany(
                f"INSERT INTO {fts} (rowid, title, body) VALUES (?, ?, ?)",
                ((i, index_terms(title), index_terms(text)) for i, title, text in rows),
            )
            rebuilt.append(name)
        conn.execute(
            "INSERT INTO meta VALUES ('lexical_version', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (LEXICAL_VERSION,),
        )
        return rebuilt
