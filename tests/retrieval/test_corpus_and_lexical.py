"""The retrieval building blocks without a model: corpus loaders, the chunker, the tokenizer, rank fusion."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from genmesh.errors import InvalidArgument
from services.retrieval.corpus import Document, chunk_document, load_folder, load_python_reference
from services.retrieval.lexical import match_expression, tokenize
from services.retrieval.search import candidate_depth, reciprocal_rank_fusion


def _fields(error: InvalidArgument) -> list[str]:
    return [violation.field for violation in error.violations]


# --- corpus and chunker -------------------------------------------------------------------------------------------


def test_python_reference_loads_topics_with_titles() -> None:
    docs = load_python_reference()
    by_id = {doc.doc_id: doc for doc in docs}
    assert {"with", "yield", "context-managers"} <= by_id.keys()
    assert by_id["with"].title == 'The "with" statement'
    assert by_id["with"].metadata == {"source": "pydoc_data.topics"}
    assert sum(len(doc.text) for doc in docs) > 100_000


def test_folder_loader_reads_txt_and_md_recursively(tmp_path: Path) -> None:
    (tmp_path / "guide").mkdir()
    (tmp_path / "guide" / "intro.md").write_text("# Getting started\n\nInstall it first.\n")
    (tmp_path / "notes.txt").write_text("\n\nPlain notes\nmore text\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    docs = load_folder(tmp_path)
    assert [d.doc_id for d in docs] == ["guide/intro.md", "latin1.txt", "notes.txt"]
    intro = docs[0]
    assert intro.title == "Getting started" and "Install it first." in intro.text
    assert intro.metadata == {"source": "guide/intro.md", "format": "md"}
    assert docs[2].title == "Plain notes" and docs[2].metadata["format"] == "txt"
    assert docs[1].text == "caf\ufffd"
    with pytest.raises(FileNotFoundError):
        load_folder(tmp_path / "missing")
    with pytest.raises(NotADirectoryError):
        load_folder(tmp_path / "notes.txt")


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


# --- tokenizer and FTS5 query -----------------------------------------------------------------------------------------


def test_tokenizer_keeps_identifiers_and_drops_stopwords() -> None:
    # Python keywords (with, and, for, in) are topics of the reference, so they are not stopwords.
    tokens = tokenize("How does the WITH statement call __enter__ and __exit__?")
    assert tokens == ["with", "statement", "call", "__enter__", "enter", "and", "__exit__", "exit"]
    assert tokenize("a the of") == []
    assert tokenize("x = 42; for i in range(3)") == ["42", "for", "in", "range", "3"]


def test_match_expression_quotes_distinct_terms() -> None:
    assert match_expression("yield, yield AND NOT near(") == '"yield" OR "and" OR "not" OR "near"'
    assert match_expression("the of a") is None
    assert match_expression('"__init__"') == '"__init__" OR "init"'


# --- reciprocal rank fusion -------------------------------------------------------------------------------------------


def test_rrf_rewards_agreement_and_keeps_order_on_ties() -> None:
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 4, 1]], k=60)
    ids = [i for i, _ in fused]
    assert ids[:2] == [1, 3], "ids both rankings found come first"
    assert ids[2:] == [2, 4], "single finds tie and keep first-seen order"
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 63)
    assert reciprocal_rank_fusion([[], []]) == []
    assert [i for i, _ in reciprocal_rank_fusion([[7, 8]])] == [7, 8]
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([[1]], k=-1)


def test_candidate_depth() -> None:
    assert candidate_depth(4, hybrid=True) == 50
    assert candidate_depth(400, hybrid=True) == 400
    assert candidate_depth(4, hybrid=False) == 4
