"""Query execution: a micro-batch of checked queries, with their vectors, answered in one pass over the store.

Dense search runs one FAISS call per group of queries that share collection, filters and depth; BM25 runs per
query in SQLite FTS5; the passages of every query come back in one row fetch. Runs in a worker thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from genmesh.errors import NotFound, quote
from services.retrieval import catalog, documents
from services.retrieval.catalog import CollectionRow
from services.retrieval.indexes import IndexCache
from services.retrieval.lexical import match_expression
from services.retrieval.search import candidate_depth, reciprocal_rank_fusion
from services.retrieval.validation import QueryParams, SearchMode
from services.retrieval.vectors import Vectors

SPARE_CANDIDATES = 16
"""Rows deleted since the index answered are skipped; this many spare candidates make up for them."""


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


Ranking = list[tuple[int, float]]
_GroupKey = tuple[int, tuple[tuple[str, str], ...], int]


def run_queries(
    conn: sqlite3.Connection,
    indexes: IndexCache,
    queries: Sequence[QueryParams],
    vectors: Sequence[Vectors | None],
) -> list[list[Hit] | NotFound]:
    """The hits of each query (a query's vector is None in BM25 mode), or NotFound for an unknown collection."""
    results: list[list[Hit] | NotFound] = [[] for _ in queries]
    found: dict[str, CollectionRow | None] = {}
    dense: list[Ranking] = [[] for _ in queries]
    groups: dict[_GroupKey, list[int]] = {}
    for i, params in enumerate(queries):
        if params.collection not in found:
            found[params.collection] = catalog.get_collection(conn, params.collection)
        collection = found[params.collection]
        if collection is None:
            results[i] = NotFound(f"collection {quote(params.collection)} does not exist")
        elif vectors[i] is not None:
            depth = candidate_depth(params.top_k, params.mode is SearchMode.HYBRID)
            groups.setdefault((collection.id, tuple(sorted(params.filters.items())), depth), []).append(i)
    dims = {row.id: row.dim for row in found.values() if row is not None}
    for (collection_id, filters, depth), members in groups.items():
        matrix = np.stack([vector for i in members if (vector := vectors[i]) is not None])
        rankings = _dense(conn, indexes, collection_id, dims[collection_id], filters, depth, matrix)
        for i, ranking in zip(members, rankings, strict=True):
            dense[i] = ranking
    wanted: list[Ranking] = [[] for _ in queries]
    for i, params in enumerate(queries):
        collection = found[params.collection]
        if collection is not None:
            wanted[i] = _rank(conn, collection.id, params, dense[i])
    rows = documents.fetch_chunks(conn, sorted({chunk_id for ranking in wanted for chunk_id, _ in ranking}))
    for i, params in enumerate(queries):
        if not isinstance(results[i], NotFound):
            results[i] = _hits(wanted[i], rows, params.top_k)
    return results


def _dense(
    conn: sqlite3.Connection,
    indexes: IndexCache,
    collection_id: int,
    dim: int,
    filters: tuple[tuple[str, str], ...],
    depth: int,
    matrix: Vectors,
) -> list[Ranking]:
    index = indexes.get(collection_id, dim)
    with index.lock:
        indexes.sync(conn, index, collection_id)
        allowed = documents.collection_chunk_ids(conn, collection_id, dict(filters)) if filters else None
        return index.search(matrix, depth, allowed)


def _rank(conn: sqlite3.Connection, collection_id: int, params: QueryParams, dense: Ranking) -> Ranking:
    """The query's candidates, best first: dense, BM25 or both fused, above ``min_score``, with spares."""
    hybrid = params.mode is SearchMode.HYBRID
    lexical: Ranking = []
    if params.mode is not SearchMode.DENSE:
        match = match_expression(params.text)
        if match is not None:
            depth = candidate_depth(params.top_k, hybrid)
            lexical = documents.bm25_search(conn, collection_id, match, depth, params.filters)
    ranked = reciprocal_rank_fusion([[i for i, _ in dense], [i for i, _ in lexical]]) if hybrid else dense or lexical
    if params.min_score is not None:
        ranked = [(i, s) for i, s in ranked if s >= params.min_score]
    return ranked[: params.top_k + SPARE_CANDIDATES]


def _hits(wanted: Ranking, rows: Mapping[int, documents.StoredChunk], top_k: int) -> list[Hit]:
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
        if len(hits) == top_k:
            break
    return hits
