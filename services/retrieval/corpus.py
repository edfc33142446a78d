"""Documents, the demo corpus (Python's own language reference), folders of text files, and the overlapping chunker."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from genmesh.errors import FieldViolation, InvalidArgument

DEFAULT_CHUNK_SIZE = 800
"""Default window length of a chunk, in characters."""
DEFAULT_CHUNK_OVERLAP = 160
"""Default number of characters two neighbouring chunks share."""
MIN_CHUNK_SIZE = 32
MAX_CHUNK_SIZE = 100_000
PYTHON_REFERENCE_SOURCE = "pydoc_data.topics"
TEXT_SUFFIXES = (".txt", ".md")
"""The files ``load_folder`` reads."""


@dataclass(frozen=True, slots=True)
class Document:
    """One document of a collection: a stable id, a human title, its full text and string metadata."""

    doc_id: str
    title: str
    text: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Chunk:
    """A window of a document's text; ``text == document.text[start:end]``."""

    chunk_id: str
    doc_id: str
    title: str
    text: str
    start: int
    end: int
    ordinal: int


def _title_of(topic: str, text: str) -> str:
    """The first non-empty line of a reference topic is its heading; fall back to the topic name."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped:
            return stripped
    return topic


def load_python_reference() -> list[Document]:
    """The Python language reference shipped with the standard library, one document per topic.

    The document id is the topic name (``with``, ``yield``, ``context-managers``), the title its heading.
    """
    from pydoc_data.topics import topics

    return [
        Document(doc_id=name, title=_title_of(name, text), text=text, metadata={"source": PYTHON_REFERENCE_SOURCE})
        for name, text in sorted(topics.items())
    ]


def load_folder(root: Path) -> list[Document]:
    """Every ``.txt`` and ``.md`` file under ``root`` (recursively, sorted), one document each.

    The document id is the file's path relative to ``root`` (``guide/intro.md``); the title is the first
    Markdown heading or non-empty line; metadata holds ``source`` (that path) and ``format`` (``md``/``txt``).
    Files that are not UTF-8 are decoded with replacement characters. Raises FileNotFoundError or
    NotADirectoryError for a bad ``root``.
    """
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    documents = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES):
        relative = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        title = _title_of(path.stem, text).lstrip("#").strip() or path.stem
        metadata = {"source": relative, "format": path.suffix.lower().lstrip(".")}
        documents.append(Document(doc_id=relative, title=title, text=text, metadata=metadata))
    return documents


def validate_chunking(size: int, overlap: int) -> None:
    """Raise InvalidArgument naming ``size``/``overlap`` unless they describe a sane window.

    ``size`` must lie in [MIN_CHUNK_SIZE, MAX_CHUNK_SIZE]; ``overlap`` must be >= 0 and less than half of ``size``
    so that every window advances by more than half its length and chunking is linear in the text.
    """
    violations: list[FieldViolation] = []
    size_ok = isinstance(size, int) and not isinstance(size, bool) and MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE
    if not size_ok:
        violations.append(FieldViolation("size", f"must be an integer in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]"))
    if not isinstance(overlap, int) or isinstance(overlap, bool) or overlap < 0:
        violations.append(FieldViolation("overlap", "must be a non-negative integer"))
    elif size_ok and 2 * overlap >= size:
        violations.append(FieldViolation("overlap", f"must be less than half of size ({size})"))
    if violations:
        raise InvalidArgument(violations)


def _window_end(text: str, start: int, size: int) -> int:
    """End of the window starting at ``start``: the last word end in its second half, else ``start + size``."""
    end = min(start + size, len(text))
    if end == len(text):
        return end
    floor = start + size // 2
    for index in range(end, floor, -1):
        if text[index].isspace() and not text[index - 1].isspace():
            return index
    return end


def _next_start(text: str, start: int, end: int, overlap: int) -> int:
    """Start of the next window: ``overlap`` characters before ``end``, moved forward to a word start if any."""
    candidate = max(end - overlap, start + 1)
    if not text[candidate - 1].isspace():
        for index in range(candidate + 1, end):
            if text[index - 1].isspace():
                candidate = index
                break
    while candidate < len(text) and text[candidate].isspace():
        candidate += 1
    return candidate


def chunk_document(doc: Document, size: int = DEFAULT_CHUNK_SIZE, overlap: int = DEFAULT_CHUNK_OVERLAP) -> list[Chunk]:
    """Split ``doc`` into windows of at most ``size`` characters that overlap by at most ``overlap``.

    Windows end at a word boundary where one lies in their second half and the next window starts at a word
    boundary inside the overlap, so words are rarely cut. Offsets are exact: ``chunk.text == doc.text[start:end]``.
    Chunks are numbered from 0 and their id is ``f"{doc_id}#{n}"``; whitespace-only windows are skipped.
    """
    validate_chunking(size, overlap)
    text = doc.text
    chunks: list[Chunk] = []
    start = 0
    while start < len(text) and text[start].isspace():
        start += 1
    while start < len(text):
        end = _window_end(text, start, size)
        piece = text[start:end]
        if piece.strip():
            n = len(chunks)
            chunks.append(Chunk(f"{doc.doc_id}#{n}", doc.doc_id, doc.title, piece, start, end, n))
        if end >= len(text):
            break
        start = _next_start(text, start, end, overlap)
    return chunks


def chunk_documents(
    docs: Iterable[Document], size: int = DEFAULT_CHUNK_SIZE, overlap: int = DEFAULT_CHUNK_OVERLAP
) -> list[Chunk]:
    """Chunk every document in order; see ``chunk_document``."""
    validate_chunking(size, overlap)
    return [chunk for doc in docs for chunk in chunk_document(doc, size, overlap)]
