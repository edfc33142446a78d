"""Each collection's FAISS index in memory, kept at SQLite's generation, and saved to (and loaded from) files.

A write commits to SQLite before the in-memory index changes, under the index's lock, so no search sees one
without the other. An index records the collection generation it reflects and is rebuilt from SQLite whenever
it is found behind (after a crash, or when another process wrote to the same data directory).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from services.retrieval import catalog, documents
from services.retrieval.catalog import CollectionRow
from services.retrieval.documents import WriteOutcome
from services.retrieval.metrics import RetrievalMetrics
from services.retrieval.schema import transaction
from services.retrieval.vectors import (
    IndexOptions,
    VectorIndex,
    find_index_file,
    write_index_file,
)

log = logging.getLogger("genmesh.retrieval")


class IndexCache:
    """The vector indexes of the collections of one store (``directory`` holds their files)."""

    def __init__(self, directory: Path, options: IndexOptions, metrics: RetrievalMetrics | None = None) -> None:
        self.directory = directory
        self.options = options
        self._metrics = metrics
        self._indexes: dict[int, VectorIndex] = {}
        self._lock = threading.Lock()

    def get(self, collection_id: int, dim: int) -> VectorIndex:
        """The collection's index (an empty one, generation -1, on first use: ``sync`` fills it)."""
        with self._lock:
            index = self._indexes.get(collection_id)
            if index is None or index.dim != dim:
                index = self._indexes[collection_id] = VectorIndex(dim, self.options, generation=-1)
            return index

    def rebuild(self, conn: sqlite3.Connection, index: VectorIndex, collection_id: int) -> None:
        """Reload the index from SQLite (caller holds ``index.lock``); one read snapshot for ids and generation."""
        started = time.perf_counter()
        with transaction(conn, immediate=False):
            collection = catalog.get_collection_by_id(conn, collection_id)
            if collection is None:
                return
            ids, vectors = documents.collection_vectors(conn, collection)
        index.reset(ids, vectors, collection.generation)
        seconds = time.perf_counter() - started
        if self._metrics is not None:
            self._metrics.rebuilt(seconds)
        log.info(
            "vector index rebuilt from the store",
            extra={
                "collection": collection.name,
                "vectors": len(ids),
                "generation": collection.generation,
                "duration_ms": round(seconds * 1000, 1),
            },
        )

    def sync(self, conn: sqlite3.Connection, index: VectorIndex, collection_id: int) -> None:
        """Rebuild the index if SQLite has another generation (caller holds ``index.lock``)."""
        if index.generation != catalog.generation(conn, collection_id):
            self.rebuild(conn, index, collection_id)

    def load(self, conn: sqlite3.Connection, collection_id: int) -> None:
        """At start-up: the saved index if it matches SQLite exactly, else a rebuild (then saved)."""
        collection = catalog.get_collection_by_id(conn, collection_id)
        if collection is None:
            return
        index = self.get(collection.id, collection.dim)
        path = find_index_file(self.directory, collection.id, self.options.kind, collection.generation)
        if path is not None:
            live = documents.collection_chunk_ids(conn, collection.id)
            loaded = VectorIndex.deserialize(
                path.read_bytes(), collection.dim, self.options, collection.generation, live
            )
            if loaded is not None:
                with self._lock:
                    self._indexes[collection.id] = loaded
                log.info(
                    "vector index loaded",
                    extra={"collection": collection.name, "vectors": loaded.size, "file": path.name},
                )
                return
        with index.lock:
            self.rebuild(conn, index, collection.id)
        self.save(collection.id)

    def save(self, collection_id: int) -> None:
        """Write the collection's index if it changed since it was last saved (atomically, named by generation)."""
        with self._lock:
            index = self._indexes.get(collection_id)
        if index is None:
            return
        with index.lock:
            if not index.dirty:
                return
            data, generation = index.serialize(), index.generation
            index.dirty = False
        write_index_file(self.directory, collection_id, self.options.kind, generation, data)

    def changed(self) -> list[int]:
        """The collections whose index changed since it was last saved."""
        with self._lock:
            return [collection_id for collection_id, index in self._indexes.items() if index.dirty]

    def commit_and_apply(
        self, conn: sqlite3.Connection, collection: CollectionRow, outcome: WriteOutcome | None
    ) -> None:
        """COMMIT the caller's write, then apply it to the index, under the index lock."""
        index = self.get(collection.id, collection.dim)
        with index.lock:
            conn.execute("COMMIT")
            if outcome is None:
                return
            if index.generation == collection.generation:
                index.remove(outcome.removed_ids)
                index.add(outcome.added_ids, outcome.added_vectors)
                index.generation = collection.generation + 1
                if index.needs_rebuild:
                    self.rebuild(conn, index, collection.id)
            else:  # the index was behind already (another process wrote): take it all from SQLite
                self.rebuild(conn, index, collection.id)
