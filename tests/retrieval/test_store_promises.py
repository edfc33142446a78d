"""The store's promises in-process: synced commits, ingest every 64 passages, stale indexes, a new embedder."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from genmesh.errors import InvalidArgument
from services.retrieval.corpus import Document
from services.retrieval.embedder import SentenceTransformerEmbedder, default_model_path
from services.retrieval.retriever import Retriever, RetrieverConfig
from services.retrieval.schema import DATABASE_FILE, Database
from services.retrieval.validation import MAX_DOCUMENTS, check_documents, check_query, document_violations

GARDEN = [
    Document("tomato", "Tomatoes", "Tomatoes need full sun, warm soil and regular deep watering."),
    Document("rose", "Roses", "Prune roses in late winter; cut above an outward facing bud."),
    Document("basil", "Basil", "Basil is a tender herb; pinch off the flower buds to keep leaves coming."),
    Document("compost", "Compost", "A compost heap turns kitchen scraps into humus in a few months."),
]


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(default_model_path(), precision="float32", threads=1)


@pytest.fixture(scope="module")
def other_embedder(tmp_path_factory: pytest.TempPathFactory) -> SentenceTransformerEmbedder:
    """The same weights with CLS pooling instead of mean pooling: another model, with other vectors of the
    same dimension (made locally; nothing is downloaded)."""
    source = default_model_path()
    copy = tmp_path_factory.mktemp("models") / "minilm-cls"
    copy.mkdir()
    for entry in source.iterdir():
        if entry.name != "1_Pooling":
            (copy / entry.name).symlink_to(entry)
    (copy / "1_Pooling").mkdir()
    pooling = json.loads((source / "1_Pooling" / "config.json").read_text())
    pooling.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
    (copy / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return SentenceTransformerEmbedder(copy, precision="float32", threads=1)


def _config(path: Path) -> RetrieverConfig:
    """Whole documents as single passages (chunk_size beyond any text here); the default commit interval."""
    return RetrieverConfig(data_dir=path, chunk_size=2000, chunk_overlap=0)


async def _opened(path: Path, embedder: SentenceTransformerEmbedder) -> Retriever:
    retriever = Retriever(_config(path), embedder)
    await retriever.open()
    return retriever


def _stored_documents(path: Path) -> int:
    """Documents committed to the store, seen through a connection of its own (as another process would)."""
    with contextlib.closing(sqlite3.connect(path / DATABASE_FILE)) as conn:
        return int(conn.execute("SELECT count(*) FROM documents").fetchone()[0])


def test_the_store_syncs_every_commit_to_disk(tmp_path: Path) -> None:
    database = Database(tmp_path / DATABASE_FILE)
    try:
        conn = database.connection()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2, "synchronous=FULL"
    finally:
        database.close()


async def test_an_acknowledged_upsert_is_committed(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    retriever = await _opened(tmp_path, embedder)
    try:
        result = await retriever.upsert("garden", GARDEN)
        assert (result.documents, result.chunks) == (4, 4)
        assert _stored_documents(tmp_path) == 4  # before any close or checkpoint
    finally:
        await retriever.close()


def test_at_most_1000_documents_per_upsert() -> None:
    docs = [Document(f"d{i}", "", f"text {i}") for i in range(MAX_DOCUMENTS + 1)]
    assert MAX_DOCUMENTS == 1000
    assert document_violations(docs[:MAX_DOCUMENTS]) == []
    with pytest.raises(InvalidArgument) as caught:
        check_documents(docs)
    [violation] = caught.value.violations
    assert violation.field == "documents" and "at most 1000 documents" in violation.description


async def test_ingest_commits_every_64_passages(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    retriever = await _opened(tmp_path, embedder)
    try:
        session = retriever.ingest("notes", "load")
        committed: list[int] = []
        for i in range(130):
            await session.add([Document(f"n{i}", f"Note {i}", f"Note number {i}.")])
            record = await retriever.recorded_progress("load")
            committed.append(record.documents if record is not None else 0)
            # Reported progress never runs ahead of what another connection finds committed.
            assert _stored_documents(tmp_path) == committed[-1]
        assert committed == [0] * 63 + [64] * 64 + [128] * 3
        record = await retriever.recorded_progress("load")
        assert record is not None and (record.chunks, record.last_document_id) == (128, "n127")
        assert (await session.finish()).documents == 130 and _stored_documents(tmp_path) == 130
    finally:
        await retriever.close()


async def test_an_index_file_with_stale_content_is_rebuilt(
    tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    first = await _opened(tmp_path, embedder)
    await first.upsert("garden", GARDEN[:2])
    await first.close()
    [old] = (tmp_path / "vectors").iterdir()
    stale = old.read_bytes()
    second = await _opened(tmp_path, embedder)
    await second.upsert("garden", GARDEN[2:])
    await second.close()
    [current] = (tmp_path / "vectors").iterdir()
    assert current.name != old.name
    current.write_bytes(stale)  # the current generation's name, but only the first two documents' vectors

    third = await _opened(tmp_path, embedder)
    try:
        [stats] = await third.stats("garden")
        assert (stats.documents, stats.chunks, stats.vectors) == (4, 4, 4)
        hits = await third.query(check_query("kitchen scraps into humus", collection="garden", mode="dense", top_k=1))
        assert [h.document_id for h in hits] == ["compost"]
    finally:
        await third.close()


async def test_a_new_embedder_re_embeds_the_store(
    tmp_path: Path,
    embedder: SentenceTransformerEmbedder,
    other_embedder: SentenceTransformerEmbedder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert other_embedder.name != embedder.name and other_embedder.dim == embedder.dim
    texts = [f"{d.title}\n{d.text}" for d in GARDEN]
    assert float(np.min(np.sum(embedder.encode(texts) * other_embedder.encode(texts), axis=1))) < 0.95

    first = await _opened(tmp_path, embedder)
    await first.upsert("garden", GARDEN)
    await first.close()  # saves the index of the first embedder's vectors

    with caplog.at_level(logging.INFO, logger="genmesh.retrieval"):
        second = await _opened(tmp_path, other_embedder)
    try:
        assert "re-embedding a collection made with another embedder" in caplog.messages
        [stats] = await second.stats("garden")
        assert (stats.embedder, stats.dim, stats.vectors) == (other_embedder.name, other_embedder.dim, 4)
        with contextlib.closing(sqlite3.connect(tmp_path / DATABASE_FILE)) as conn:
            blobs = [row[0] for row in conn.execute("SELECT vector FROM chunks ORDER BY id")]
        stored = np.stack([np.frombuffer(blob, dtype=np.float32) for blob in blobs])
        np.testing.assert_allclose(stored, other_embedder.encode(texts), atol=1e-4)
        # The searched index holds the new vectors too: a passage's own text is its nearest neighbour.
        for doc, text in zip(GARDEN, texts, strict=True):
            [hit] = await second.query(check_query(text, collection="garden", mode="dense", top_k=1))
            assert hit.document_id == doc.doc_id and hit.score > 0.999, (doc.doc_id, hit)
        await second.upsert("garden", [Document("mint", "Mint", "Mint spreads fast; grow it in a pot.")])
    finally:
        await second.close()
