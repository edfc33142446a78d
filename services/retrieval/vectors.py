"""Dense vectors of one collection in a FAISS index (exact inner product, or HNSW), and its file on disk.

The index is a cache of the vectors SQLite holds: it records the collection ``generation`` it reflects, and
whoever finds it behind SQLite rebuilds it from there. Ids are SQLite chunk row ids.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

Ids = npt.NDArray[np.int64]
Vectors = npt.NDArray[np.float32]
_FILE = re.compile(r"c(\d+)\.(flat|hnsw)\.g(\d+)\.faiss")


def use_search_threads(threads: int) -> None:
    """Set the OpenMP threads of FAISS calls made from this thread (the setting is per calling thread).

    FAISS and torch each bring their own OpenMP runtime; on a small machine, their idle workers spin against
    each other (a 0.03 ms search took 8-9 ms right after a forward pass on 2 cores). One thread avoids that,
    and a micro-batch's query matrix still scans in one BLAS call.
    """
    faiss.omp_set_num_threads(threads)


class IndexKind(StrEnum):
    """How vectors are searched: ``flat`` is exact (a scan), ``hnsw`` approximate and sublinear."""

    FLAT = "flat"
    HNSW = "hnsw"


@dataclass(frozen=True, slots=True)
class IndexOptions:
    """The kind of index new and rebuilt collections get, and the HNSW knobs."""

    kind: IndexKind = IndexKind.FLAT
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    tombstone_ratio: float = 0.25
    search_threads: int = 1

    def __post_init__(self) -> None:
        if not 4 <= self.hnsw_m <= 128:
            raise ValueError(f"hnsw_m must lie in [4, 128], got {self.hnsw_m}")
        if self.hnsw_ef_construction < 8 or self.hnsw_ef_search < 8:
            raise ValueError("hnsw_ef_construction and hnsw_ef_search must be >= 8")
        if not 0.0 < self.tombstone_ratio <= 1.0:
            raise ValueError(f"tombstone_ratio must lie in (0, 1], got {self.tombstone_ratio}")
        if not 1 <= self.search_threads <= 256:
            raise ValueError(f"search_threads must lie in [1, 256], got {self.search_threads}")


class VectorIndex:
    """One collection's vectors. Callers hold ``lock`` around every method (searches included).

    Removing from an HNSW graph is not possible, so removed ids become tombstones that searches skip;
    ``needs_rebuild`` turns true once they exceed ``tombstone_ratio`` of the index.
    """

    def __init__(self, dim: int, options: IndexOptions, generation: int = 0) -> None:
        self.dim = dim
        self.options = options
        self.kind = options.kind
        self.generation = generation
        self.lock = threading.Lock()
        self.dirty = False
        self._tombstones: set[int] = set()
        self._index = self._empty()

    def _empty(self) -> Any:
        inner: Any
        if self.kind is IndexKind.HNSW:
            inner = faiss.IndexHNSWFlat(self.dim, self.options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = self.options.hnsw_ef_construction
            inner.hnsw.efSearch = self.options.hnsw_ef_search
        else:
            inner = faiss.IndexFlatIP(self.dim)
        return faiss.IndexIDMap2(inner)

    @property
    def size(self) -> int:
        """Live vectors (tombstones excluded)."""
        return int(self._index.ntotal) - len(self._tombstones)

    @property
    def nbytes(self) -> int:
        """Approximate memory held by the index."""
        n = int(self._index.ntotal)
        per_vector = self.dim * 4 + 8
        if self.kind is IndexKind.HNSW:
            per_vector += self.options.hnsw_m * 2 * 4 + 16
        return n * per_vector

    @property
    def needs_rebuild(self) -> bool:
        """Too many tombstones: rebuilding from the live vectors would make searches faster and exact again."""
        total = int(self._index.ntotal)
        return bool(self._tombstones) and len(self._tombstones) > self.options.tombstone_ratio * total

    def ids(self) -> Ids:
        """Every id in the index, tombstones included."""
        return np.asarray(faiss.vector_to_array(self._index.id_map), dtype=np.int64)

    def add(self, ids: Ids, vectors: Vectors) -> None:
        """Add ``vectors`` (one row per id)."""
        if len(ids):
            self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, np.int64))
            self.dirty = True

    def remove(self, ids: Ids) -> None:
        """Remove ``ids`` (unknown ids are ignored)."""
        if not len(ids):
            return
        if self.kind is IndexKind.HNSW:
            self._tombstones.update(int(i) for i in ids)
        else:
            self._index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64)))
        self.dirty = True

    def reset(self, ids: Ids, vectors: Vectors, generation: int) -> None:
        """Replace the whole content (a rebuild)."""
        self._index = self._empty()
        self._tombstones.clear()
        self.add(ids, vectors)
        self.generation = generation
        self.dirty = True

    def search(self, queries: Vectors, k: int, allowed: Ids | None = None) -> list[list[tuple[int, float]]]:
        """For each row of ``queries``, the ``k`` nearest ids by inner product, best first, optionally only among
        ``allowed``: one FAISS call for the whole matrix (a micro-batch's queries share one scan)."""
        total = int(self._index.ntotal)
        if total == 0 or k < 1 or (allowed is not None and not len(allowed)):
            return [[] for _ in range(len(queries))]
        selector: Any = None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64))
            k = min(k, len(allowed))
        elif self._tombstones:
            excluded = faiss.IDSelectorBatch(np.fromiter(self._tombstones, dtype=np.int64))
            selector = faiss.IDSelectorNot(excluded)
        k = min(k, total)
        if self.kind is IndexKind.HNSW:
            params: Any = faiss.SearchParametersHNSW(efSearch=max(self.options.hnsw_ef_search, k))  # type: ignore[attr-defined]
            if selector is not None:
                params.sel = selector
        else:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None  # type: ignore[call-arg]
        matrix = np.ascontiguousarray(queries.reshape(-1, self.dim), dtype=np.float32)
        scores, ids = self._index.search(matrix, k, params=params)
        return [
            [(int(i), float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
            for row_ids, row_scores in zip(ids, scores, strict=True)
        ]

    def serialize(self) -> bytes:
        """The index as bytes (tombstones are not kept: a loader finds them by comparing with SQLite)."""
        return bytes(faiss.serialize_index(self._index))

    @classmethod
    def deserialize(
        cls, data: bytes, dim: int, options: IndexOptions, generation: int, live_ids: Ids
    ) -> VectorIndex | None:
        """An index loaded from ``data``, or None when it does not hold exactly the ``live_ids`` (plus, for
        HNSW, removed ids, which become tombstones again) or has another dimension."""
        loaded = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        index = cls(dim, options, generation)
        if int(loaded.d) != dim:
            return None
        index._index = loaded
        stored = index.ids()
        live = np.asarray(live_ids, dtype=np.int64)
        extra = np.setdiff1d(stored, live, assume_unique=False)
        if len(np.setdiff1d(live, stored)) or (len(extra) and options.kind is IndexKind.FLAT):
            return None
        index._tombstones = {int(i) for i in extra}
        index.dirty = False
        return index


def index_file(directory: Path, collection_id: int, kind: IndexKind, generation: int) -> Path:
    """Where the index of a collection at a generation is kept: ``c<id>.<kind>.g<generation>.faiss``."""
    return directory / f"c{collection_id}.{kind.value}.g{generation}.faiss"


def find_index_file(directory: Path, collection_id: int, kind: IndexKind, generation: int) -> Path | None:
    """The saved index of the collection at exactly ``generation``, if there is one."""
    path = index_file(directory, collection_id, kind, generation)
    return path if path.is_file() else None


def write_index_file(directory: Path, collection_id: int, kind: IndexKind, generation: int, data: bytes) -> Path:
    """Write atomically (temporary file, fsync, rename) and delete the collection's files of older generations."""
    directory.mkdir(parents=True, exist_ok=True)
    path = index_file(directory, collection_id, kind, generation)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with temporary.open("wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)
    for other in directory.iterdir():
        found = _FILE.fullmatch(other.name)
        if found and int(found.group(1)) == collection_id and int(found.group(3)) < generation:
            with contextlib.suppress(FileNotFoundError):
                other.unlink()
    return path
