"""The Retriever in-process with the real embedder: upserts, hybrid search, filters, deletes, persistence, resume."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from genmesh.errors import InvalidArgument, NotFound
from services.retrieval.corpus import Document
from services.retrieval.embedder import SentenceTransformerEmbedder, default_model_path
from services.retrieval.retriever import Retriever, RetrieverConfig
from services.retrieval.schema import DATABASE_FILE
from services.retrieval.validation import SearchMode, check_query
from services.retrieval.vectors import IndexKind, IndexOptions

GARDEN = [
    Document(
        "tomato", "Tomatoes", "Tomatoes need full sun, warm soil and regular deep watering.", {"kind": "vegetable"}
    ),
    Document("rose", "Roses", "Prune roses in late winter; cut above an outward facing bud.", {"kind": "flower"}),
    Document(
        "basil", "Basil", "Basil is a tender herb; pinch off the flower buds to keep leaves coming.", {"kind": "herb"}
    ),
    Document("compost", "Compost", "A compost heap turns kitchen scraps into humus in a few months.", {"kind": "soil"}),
]


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(default_model_path(), threads=1)


def _config(path: Path, **overrides: object) -> RetrieverConfig:
    return RetrieverConfig(data_dir=path, chunk_size=64, chunk_overlap=8, **overrides)  # type: ignore[arg-type]


async def _opened(config: RetrieverConfig, embedder: SentenceTransformerEmbedder) -> Retriever:
    retriever = Retriever(config, embedder)
    await retriever.open()
    return retriever


async def _ids(retriever: Retriever, text: str, mode: str = "hybrid", **kwargs: object) -> list[str]:
    hits = await retriever.query(check_query(text, mode=mode, collection="garden", **kwargs))  # type: ignore[arg-type]
    return [hit.document_id for hit in hits]


async def test_modes_filters_replace_and_delete(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    retriever = await _opened(_config(tmp_path), embedder)
    try:
        result = await retriever.upsert("garden", GARDEN)
        assert (result.documents, result.replaced) == (4, 0) and result.chunks >= 4
        # Meaning without shared words: only the dense side can find it.
        assert (await _ids(retriever, "which plant wants lots of sunshine", "dense"))[0] == "tomato"
        # An exact rare word: BM25 finds it.
        assert (await _ids(retriever, "humus", "bm25")) == ["compost"]
        assert (await _ids(retriever, "how do I cut back roses"))[0] == "rose"

        hits = await retriever.query(check_query("pruning", collection="garden", mode="bm25", top_k=1))
        assert hits[0].rank == 1 and hits[0].chunk_id == "rose#0" and hits[0].metadata == {"kind": "flower"}
        assert hits[0].text == GARDEN[1].text[hits[0].start : hits[0].end]

        assert set(await _ids(retriever, "plants", filters={"kind": "herb"})) == {"basil"}
        assert await _ids(retriever, "plants", filters={"kind": "tree"}) == []
        scores = [h.score for h in await retriever.query(check_query("sun", collection="garden", mode="dense"))]
        assert scores == sorted(scores, reverse=True)
        high = await retriever.query(check_query("sun", collection="garden", mode="dense", min_score=scores[0]))
        assert [h.score for h in high] == [scores[0]]

        replaced = await retriever.upsert("garden", [Document("tomato", "Tomatoes", "Tomatoes are picked when red.")])
        assert replaced.replaced == 1
        assert "tomato" not in await _ids(retriever, "watering", "bm25")
        assert (await _ids(retriever, "picked when red", "bm25")) == ["tomato"]

        assert (await retriever.delete("garden", document_ids=["rose", "nope"])).documents == 1
        assert (await retriever.delete("garden", filters={"kind": "herb"})).documents == 1
        assert set(await _ids(retriever, "garden plants", top_k=10)) == {"tomato", "compost"}
        [stats] = await retriever.stats("garden")
        assert (stats.documents, stats.vectors) == (2, stats.chunks) and stats.index_kind == "flat"
        with pytest.raises(InvalidArgument):
            await retriever.delete("garden")
        with pytest.raises(NotFound):
            await retriever.query(check_query("x", collection="nowhere"))
        with pytest.raises(NotFound):
            await retriever.stats("nowhere")
    finally:
        await retriever.close()


async def test_a_micro_batch_answers_each_query_as_it_would_alone(
    tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    retriever = await _opened(_config(tmp_path, batch_window_ms=200.0), embedder)
    try:
        await retriever.upsert("garden", GARDEN)
        await retriever.upsert("kitchen", [Document("bread", "Bread", "Knead the dough, then let it rise.")])
        queries = [
            check_query("which plant wants lots of sunshine", collection="garden"),
            check_query("which plant wants lots of sunshine", collection="garden", mode="dense", top_k=2),
            check_query("plants", collection="garden", filters={"kind": "herb"}),
            check_query("cut back roses", collection="garden", top_k=1, min_score=0.0),
            check_query("how do I bake", collection="kitchen"),
            check_query("pruning", collection="garden", mode="bm25"),
        ]
        alone = [await retriever.query(q) for q in queries]  # one at a time: each is a batch of one
        before = retriever.batch_stats.batches
        together = await asyncio.gather(*(retriever.query(q) for q in queries))
        # Two collections, filters and depths in one forward pass; the BM25 query needs no encoding.
        assert retriever.batch_stats.batches == before + 1 and retriever.batch_stats.largest == 5
        for one, many in zip(alone, together, strict=True):
            assert [h.chunk_id for h in many] == [h.chunk_id for h in one]
            assert [h.rank for h in many] == [h.rank for h in one]
            assert [h.score for h in many] == pytest.approx([h.score for h in one], abs=1e-2)
        assert together[2] and {h.document_id for h in together[2]} == {"basil"}
        assert [h.document_id for h in together[4]] == ["bread"]
    finally:
        await retriever.close()


async def test_index_is_saved_reloaded_and_rebuilt_when_stale(
    tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    first = await _opened(_config(tmp_path), embedder)
    await first.upsert("garden", GARDEN)
    await first.close()
    saved = sorted(p.name for p in (tmp_path / "vectors").iterdir())
    assert len(saved) == 1 and saved[0].startswith("c1.flat.g")

    # Change SQLite behind the index's back, as a crash after a commit would leave it.
    with sqlite3.connect(tmp_path / DATABASE_FILE) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("DELETE FROM documents WHERE doc_id = 'compost'")
        conn.execute(
            "UPDATE collections SET generation = generation + 1, documents = (SELECT count(*) FROM documents),"
            " chunks = (SELECT count(*) FROM chunks)"
        )
    second = await _opened(_config(tmp_path), embedder)
    try:
        [stats] = await second.stats("garden")
        assert stats.vectors == stats.chunks and stats.documents == 3
        assert "compost" not in await _ids(second, "kitchen scraps", "dense", top_k=10)
    finally:
        await second.close()


async def test_two_retrievers_on_one_directory_see_each_others_writes(
    tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    one = await _opened(_config(tmp_path), embedder)
    two = await _opened(_config(tmp_path), embedder)
    try:
        await one.upsert("garden", GARDEN[:2])
        assert set(await _ids(two, "plants", "dense")) == {"tomato", "rose"}
        await two.upsert("garden", GARDEN[2:])
        assert set(await _ids(one, "plants", "dense", top_k=10)) == {"tomato", "rose", "basil", "compost"}
    finally:
        await one.close()
        await two.close()


async def test_hnsw_index_skips_deleted_vectors(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    config = _config(tmp_path, index=IndexOptions(kind=IndexKind.HNSW, hnsw_m=8))
    retriever = await _opened(config, embedder)
    try:
        await retriever.upsert("garden", GARDEN)
        await retriever.delete("garden", document_ids=["compost"])
        assert "compost" not in await _ids(retriever, "kitchen scraps compost", "dense", top_k=10)
        [stats] = await retriever.stats("garden")
        assert stats.index_kind == "hnsw" and stats.vectors == stats.chunks
    finally:
        await retriever.close()
    reopened = await _opened(config, embedder)
    try:
        assert "compost" not in await _ids(reopened, "kitchen scraps compost", "dense", top_k=10)
    finally:
        await reopened.close()


async def test_ingest_commits_in_batches_and_resumes(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    retriever = await _opened(_config(tmp_path, ingest_batch_chunks=1), embedder)
    try:
        session = retriever.ingest("garden", "load-1")
        await session.add(GARDEN[:2])
        progress = await retriever.ingest_progress("load-1")
        assert (progress.documents, progress.last_document_id, progress.completed) == (2, "rose", False)
        # The stream broke here; a new session resumes the counts and sends the rest.
        resumed = retriever.ingest("garden", "load-1", resume=True)
        await resumed.add(GARDEN[2:])
        final = await resumed.finish()
        assert (final.documents, final.last_document_id, final.completed) == (4, "compost", True)
        assert (await retriever.ingest_progress("load-1")).completed
        [stats] = await retriever.stats("garden")
        assert stats.documents == 4
        with pytest.raises(InvalidArgument) as caught:
            await retriever.ingest("garden", "load-2").add([Document("x", "X", "")], "documents")
        assert [v.field for v in caught.value.violations] == ["documents[0].text"]
        with pytest.raises(NotFound):
            await retriever.ingest_progress("never")
    finally:
        await retriever.close()


def test_configuration_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="chunking"):
        RetrieverConfig(data_dir=tmp_path, chunk_size=100, chunk_overlap=60)
    with pytest.raises(ValueError, match="batch_window_ms"):
        RetrieverConfig(data_dir=tmp_path, batch_window_ms=-1)
    with pytest.raises(ValueError, match="hnsw_m"):
        IndexOptions(hnsw_m=1)
    assert SearchMode("bm25") is SearchMode.BM25
