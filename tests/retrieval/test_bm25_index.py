"""Tests for the retrieval domain layer: chunker, tokenizer, BM25 ranking and PassageIndex validation."""

from __future__ import annotations

import itertools
import time

import pytest

from genmesh.errors import InvalidArgument, NotFound
from services.retrieval.bm25 import BM25Index, BM25Params, tokenize
from services.retrieval.corpus import Document, chunk_document, chunk_documents, load_python_reference
from services.retrieval.index import DEFAULT_COLLECTION, MAX_QUERY_CHARS, MAX_TOP_K, PassageIndex


@pytest.fixture(scope="module")
def index() -> PassageIndex:
    return PassageIndex()


def _fields(error: InvalidArgument) -> list[str]:
    return [violation.field for violation in error.violations]


# --- corpus and chunker -------------------------------------------------------------------------------------------


def test_python_reference_loads_topics_with_titles() -> None:
    docs = load_python_reference()
    by_id = {doc.doc_id: doc for doc in docs}
    assert {"with", "yield", "context-managers"} <= by_id.keys()
    assert by_id["with"].title == 'The "with" statement'
    assert sum(len(doc.text) for doc in docs) > 100_000


def test_chunks_overlap_and_offsets_are_exact() -> None:
    doc = Document("d", "Title", " ".join(f"word{i}" for i in range(2000)))
    chunks = chunk_document(doc, size=200, overlap=50)
    assert len(chunks) > 10
    for n, chunk in enumerate(chunks):
        assert chunk.chunk_id == f"d#{n}" and chunk.ordinal == n
        assert chunk.doc_id == "d" and chunk.title == "Title"
        assert chunk.text == doc.text[chunk.start : chunk.end]
        assert 0 < chunk.end - chunk.start <= 200
        assert not chunk.text[0].isspace() and not chunk.text[-1].isspace()
    assert chunks[0].start == 0 and chunks[-1].end == len(doc.text)
    for previous, current in itertools.pairwise(chunks):
        shared = previous.end - current.start
        assert 0 < shared <= 50, "neighbours must overlap, by at most `overlap` characters"
        assert current.start > previous.start
        assert doc.text[current.start - 1] == " ", "windows start at a word"


def test_chunker_without_overlap_and_without_whitespace() -> None:
    doc = Document("x", "X", "a" * 1000)
    chunks = chunk_document(doc, size=100, overlap=0)
    assert [(c.start, c.end) for c in chunks] == [(i, i + 100) for i in range(0, 1000, 100)]
    assert "".join(c.text for c in chunks) == doc.text
    overlapping = chunk_document(doc, size=100, overlap=20)
    assert [c.start for c in overlapping[:3]] == [0, 80, 160]


def test_short_and_blank_documents() -> None:
    assert [(c.start, c.end) for c in chunk_document(Document("s", "S", "  hello  "))] == [(2, 9)]
    assert chunk_document(Document("e", "E", "")) == []
    assert chunk_document(Document("w", "W", " \n\t ")) == []


@pytest.mark.parametrize(
    ("size", "overlap", "fields"),
    [(0, 0, ["size"]), (10**9, 0, ["size"]), (100, -1, ["overlap"]), (100, 50, ["overlap"]), (True, 0, ["size"])],
)
def test_chunking_parameters_are_validated(size: int, overlap: int, fields: list[str]) -> None:
    with pytest.raises(InvalidArgument) as caught:
        chunk_document(Document("d", "D", "text"), size=size, overlap=overlap)
    assert _fields(caught.value) == fields


# --- tokenizer and BM25 ---------------------------------------------------------------------------------------------


def test_tokenizer_keeps_identifiers_and_drops_stopwords() -> None:
    # Python keywords (with, and, for, in) are topics of the reference, so they are not stopwords.
    tokens = tokenize("How does the WITH statement call __enter__ and __exit__?")
    assert tokens == ["with", "statement", "call", "__enter__", "enter", "and", "__exit__", "exit"]
    assert tokenize("a the of") == []
    assert tokenize("x = 42; for i in range(3)") == ["42", "for", "in", "range", "3"]


def test_bm25_prefers_rare_terms_and_title_matches() -> None:
    docs = [
        Document("a", "Apples", "apples apples are fruit"),
        Document("b", "Fruit", "bananas are fruit"),
        Document("c", "Veg", "carrots are vegetables, not fruit"),
    ]
    bm25 = BM25Index(chunk_documents(docs, size=64, overlap=0))
    assert [s.chunk.doc_id for s in bm25.search("apples")] == ["a"]
    ranked = [s.chunk.doc_id for s in bm25.search("fruit", top_k=3)]
    assert ranked[0] == "b", "the title boost puts the chunk titled Fruit first"
    scores = [s.score for s in bm25.search("fruit", top_k=3)]
    assert scores == sorted(scores, reverse=True)
    assert bm25.search("the of a") == []


def test_bm25_ties_keep_indexing_order() -> None:
    docs = [Document(f"d{i}", "same", "identical text here") for i in range(5)]
    bm25 = BM25Index(chunk_documents(docs, size=64, overlap=0))
    results = bm25.search("identical", top_k=5)
    assert [s.chunk.doc_id for s in results] == ["d0", "d1", "d2", "d3", "d4"]
    assert len({s.score for s in results}) == 1


def test_bm25_params_are_validated() -> None:
    with pytest.raises(ValueError, match="b must"):
        BM25Params(b=1.5)
    with pytest.raises(ValueError, match="k1"):
        BM25Params(k1=float("nan"))


def test_bm25_query_is_fast_over_thousands_of_chunks() -> None:
    chunks = chunk_documents(load_python_reference(), size=200, overlap=40)
    assert len(chunks) > 2500
    bm25 = BM25Index(chunks)
    bm25.search("warm up the precomputed scores")
    started = time.perf_counter()
    for _ in range(20):
        bm25.search("how does the with statement call __enter__ and __exit__ in a function", top_k=10)
    per_query = (time.perf_counter() - started) / 20
    assert per_query < 0.05, f"{per_query * 1000:.1f} ms per query"


# --- PassageIndex -----------------------------------------------------------------------------------------------------


def test_with_statement_query_finds_with_topic(index: PassageIndex) -> None:
    hits = index.query("how does the with statement call __enter__ and __exit__", top_k=3)
    assert {"with", "context-managers"} & {hit.document_id for hit in hits}
    assert [hit.rank for hit in hits] == [1, 2, 3]
    assert hits[0].score >= hits[1].score >= hits[2].score > 0


def test_yield_query_finds_yield_topic(index: PassageIndex) -> None:
    hits = index.query("what does yield do in a function", top_k=3)
    assert "yield" in {hit.document_id for hit in hits}
    top = hits[0]
    assert top.chunk_id.startswith(f"{top.document_id}#")
    assert "yield" in top.text.lower()


def test_stats_count_documents_and_chunks(index: PassageIndex) -> None:
    stats = index.stats()[DEFAULT_COLLECTION]
    assert stats.documents == len(load_python_reference())
    assert stats.chunks > stats.documents


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_empty_query_names_text(index: PassageIndex, text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        index.query(text)
    assert _fields(caught.value) == ["text"]


def test_long_query_names_text(index: PassageIndex) -> None:
    index.query("x" * MAX_QUERY_CHARS)
    with pytest.raises(InvalidArgument) as caught:
        index.query("x" * (MAX_QUERY_CHARS + 1))
    assert _fields(caught.value) == ["text"]


@pytest.mark.parametrize("top_k", [0, -1, MAX_TOP_K + 1, True])
def test_bad_top_k_names_top_k(index: PassageIndex, top_k: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        index.query("yield", top_k=top_k)
    assert _fields(caught.value) == ["top_k"]


def test_all_bad_fields_are_reported_together(index: PassageIndex) -> None:
    with pytest.raises(InvalidArgument) as caught:
        index.query(" ", top_k=0, collection="nope")
    assert _fields(caught.value) == ["text", "top_k"]


def test_top_k_limits_are_inclusive(index: PassageIndex) -> None:
    assert len(index.query("statement", top_k=1)) == 1
    assert len(index.query("statement", top_k=MAX_TOP_K)) == MAX_TOP_K


def test_unknown_collection_is_not_found(index: PassageIndex) -> None:
    with pytest.raises(NotFound, match="nope"):
        index.query("yield", collection="nope")


def test_custom_collection_and_upsert_replaces() -> None:
    local = PassageIndex(load_demo=False, chunk_size=64, chunk_overlap=8)
    assert local.collections() == []
    local.add_documents([Document("kb-1", "Gardening", "tomatoes need sun and water")], "garden")
    local.add_documents([Document("kb-2", "Cooking", "tomatoes make a good sauce")], "garden")
    assert {hit.document_id for hit in local.query("tomatoes", collection="garden")} == {"kb-1", "kb-2"}
    local.add_documents([Document("kb-1", "Gardening", "roses need pruning")], "garden")
    assert [hit.document_id for hit in local.query("tomatoes", collection="garden")] == ["kb-2"]
    assert local.stats()["garden"].documents == 2
    with pytest.raises(InvalidArgument) as caught:
        local.add_documents([], "Bad Name!")
    assert _fields(caught.value) == ["collection"]


def test_bad_index_configuration_raises_value_error() -> None:
    with pytest.raises(ValueError, match="overlap"):
        PassageIndex(load_demo=False, chunk_size=100, chunk_overlap=60)
