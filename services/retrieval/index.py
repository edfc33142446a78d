"""PassageIndex: named collections of chunked documents, queried with BM25 and validated like an RPC."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from genmesh.errors import FieldViolation, InvalidArgument, NotFound
from services.retrieval.bm25 import BM25Index, BM25Params
from services.retrieval.corpus import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    Chunk,
    Document,
    chunk_document,
    load_python_reference,
    validate_chunking,
)

DEFAULT_COLLECTION = "python-reference"
"""The collection built from the demo corpus (Python's language reference)."""
DEFAULT_TOP_K = 5
MAX_TOP_K = 100
"""Largest ``top_k`` a query may ask for."""
MAX_QUERY_CHARS = 4096
"""Longest query text accepted, in characters."""
_COLLECTION_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


@dataclass(frozen=True, slots=True)
class Hit:
    """One ranked passage of a query result; ``rank`` counts from 1."""

    chunk_id: str
    document_id: str
    title: str
    text: str
    score: float
    rank: int


@dataclass(frozen=True, slots=True)
class CollectionStats:
    """Size of one collection."""

    name: str
    documents: int
    chunks: int


class _Collection:
    """The documents of one collection, their chunks and the BM25 index over them."""

    __slots__ = ("chunks", "documents", "index", "params")

    def __init__(self, params: BM25Params) -> None:
        self.params = params
        self.documents: dict[str, Document] = {}
        self.chunks: dict[str, list[Chunk]] = {}
        self.index = BM25Index(params=params)

    def upsert(self, docs: list[tuple[Document, list[Chunk]]]) -> None:
        replaced = any(doc.doc_id in self.documents for doc, _ in docs)
        for doc, chunks in docs:
            self.documents[doc.doc_id] = doc
            self.chunks[doc.doc_id] = chunks
        if replaced:
            self.index = BM25Index((c for chunks in self.chunks.values() for c in chunks), self.params)
        else:
            self.index.add(c for _, chunks in docs for c in chunks)


def validate_collection_name(name: str, field: str = "collection") -> None:
    """Raise InvalidArgument on ``field`` unless ``name`` is 1-63 of ``[a-z0-9._-]``, starting alphanumeric."""
    if not isinstance(name, str) or not _COLLECTION_NAME.fullmatch(name):
        raise InvalidArgument.field(field, "must be 1-63 characters of [a-z0-9._-] starting with a letter or digit")


class PassageIndex:
    """Named collections of passages; the default one holds the Python language reference.

    Not thread-safe: use it from one thread (the service's event loop).
    """

    def __init__(
        self,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
        params: BM25Params | None = None,
        load_demo: bool = True,
    ) -> None:
        """Build the index; ``load_demo`` fills the ``python-reference`` collection from the stdlib docs."""
        try:
            validate_chunking(chunk_size, chunk_overlap)
        except InvalidArgument as error:
            raise ValueError(f"bad chunking configuration: {error.message}") from error
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        self.params = params if params is not None else BM25Params()
        self._collections: dict[str, _Collection] = {}
        if load_demo:
            self.add_documents(load_python_reference(), DEFAULT_COLLECTION)

    def collections(self) -> list[str]:
        """Names of the collections, in creation order."""
        return list(self._collections)

    def add_documents(self, documents: Iterable[Document], collection: str = DEFAULT_COLLECTION) -> int:
        """Chunk and index ``documents`` into ``collection`` (created if new); returns the chunks added.

        A document whose id already exists replaces the old version.
        """
        validate_collection_name(collection)
        prepared: list[tuple[Document, list[Chunk]]] = []
        for position, doc in enumerate(documents):
            if not doc.doc_id.strip():
                raise InvalidArgument.field(f"documents[{position}].doc_id", "must not be empty")
            prepared.append((doc, chunk_document(doc, self.chunk_size, self.chunk_overlap)))
        target = self._collections.get(collection)
        if target is None:
            target = self._collections[collection] = _Collection(self.params)
        target.upsert(prepared)
        return sum(len(chunks) for _, chunks in prepared)

    def query(self, text: str, top_k: int = DEFAULT_TOP_K, collection: str = DEFAULT_COLLECTION) -> list[Hit]:
        """The ``top_k`` passages of ``collection`` that best match ``text``, best first.

        Raises InvalidArgument naming ``text`` (empty, whitespace-only or over MAX_QUERY_CHARS) and/or
        ``top_k`` (outside 1..MAX_TOP_K), and NotFound for an unknown collection.
        """
        violations: list[FieldViolation] = []
        if not isinstance(text, str) or not text.strip():
            violations.append(FieldViolation("text", "must not be empty"))
        elif len(text) > MAX_QUERY_CHARS:
            violations.append(FieldViolation("text", f"must be at most {MAX_QUERY_CHARS} characters, got {len(text)}"))
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
            violations.append(FieldViolation("top_k", f"must be an integer in [1, {MAX_TOP_K}], got {top_k!r}"))
        if violations:
            raise InvalidArgument(violations)
        target = self._collections.get(collection)
        if target is None:
            raise NotFound(f"collection {collection!r} does not exist")
        return [
            Hit(
                chunk_id=found.chunk.chunk_id,
                document_id=found.chunk.doc_id,
                title=found.chunk.title,
                text=found.chunk.text,
                score=found.score,
                rank=rank,
            )
            for rank, found in enumerate(target.index.search(text, top_k), start=1)
        ]

    def stats(self) -> dict[str, CollectionStats]:
        """Documents and chunks per collection, keyed by collection name."""
        return {
            name: CollectionStats(name, len(target.documents), len(target.index))
            for name, target in self._collections.items()
        }
