"""Checks of what clients send the retrieval service; every bad field is reported at once, by its path."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from genmesh.errors import FieldViolation, InvalidArgument, quote
from genmesh.mesh import DEFAULT_COLLECTION
from services.retrieval.corpus import Document

DEFAULT_TOP_K = 4
"""Passages a query returns when it does not say."""
MAX_TOP_K = 1000
"""Largest ``top_k`` a query may ask for."""
MAX_QUERY_CHARS = 4096
"""Longest query text accepted, in characters."""
MAX_DOCUMENT_CHARS = 1_000_000
"""Longest document text accepted, in characters."""
MAX_DOC_ID_CHARS = 256
MAX_TITLE_CHARS = 1024
MAX_DOCUMENTS = 1000
"""Most documents in one Upsert (or one UpsertStream message)."""
MAX_METADATA_ENTRIES = 32
MAX_METADATA_VALUE_CHARS = 1024
_METADATA_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_COLLECTION_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


class SearchMode(StrEnum):
    """How a query ranks: by embeddings, by keywords (BM25), or both fused by reciprocal rank (the default)."""

    DENSE = "dense"
    BM25 = "bm25"
    HYBRID = "hybrid"


@dataclass(frozen=True, slots=True)
class QueryParams:
    """A checked query."""

    text: str
    top_k: int = DEFAULT_TOP_K
    mode: SearchMode = SearchMode.HYBRID
    collection: str = DEFAULT_COLLECTION
    filters: Mapping[str, str] = field(default_factory=dict)
    min_score: float | None = None


def collection_violations(name: str, path: str = "collection") -> list[FieldViolation]:
    """Why ``name`` is not a collection name: 1-63 of ``[a-z0-9._-]``, starting with a letter or digit."""
    if isinstance(name, str) and _COLLECTION_NAME.fullmatch(name):
        return []
    return [FieldViolation(path, "must be 1-63 characters of [a-z0-9._-] starting with a letter or digit")]


def metadata_violations(metadata: Mapping[str, str], path: str) -> list[FieldViolation]:
    """Why ``metadata`` (or a filter) is malformed: keys of ``[A-Za-z0-9_.-]{1,64}``, bounded values and count."""
    bad: list[FieldViolation] = []
    if len(metadata) > MAX_METADATA_ENTRIES:
        bad.append(FieldViolation(path, f"at most {MAX_METADATA_ENTRIES} entries, got {len(metadata)}"))
    for key, value in metadata.items():
        if not isinstance(key, str) or not _METADATA_KEY.fullmatch(key):
            bad.append(FieldViolation(path, f"key {quote(key)} must be 1-64 characters of [A-Za-z0-9_.-]"))
        elif not isinstance(value, str) or len(value) > MAX_METADATA_VALUE_CHARS:
            bad.append(
                FieldViolation(f"{path}.{key}", f"must be a string of at most {MAX_METADATA_VALUE_CHARS} characters")
            )
    return bad


def check_query(
    text: str,
    top_k: int = DEFAULT_TOP_K,
    mode: SearchMode | str | None = SearchMode.HYBRID,
    collection: str = DEFAULT_COLLECTION,
    filters: Mapping[str, str] | None = None,
    min_score: float | None = None,
) -> QueryParams:
    """The query as QueryParams; InvalidArgument naming every bad field (``text``, ``top_k``, ``mode``, ...)."""
    bad: list[FieldViolation] = []
    if not isinstance(text, str) or not text.strip():
        bad.append(FieldViolation("text", "must not be empty"))
    elif len(text) > MAX_QUERY_CHARS:
        bad.append(FieldViolation("text", f"must be at most {MAX_QUERY_CHARS} characters, got {len(text)}"))
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
        bad.append(FieldViolation("top_k", f"must be an integer in [1, {MAX_TOP_K}], got {top_k!r}"))
    try:
        checked_mode = SearchMode(str(mode)) if mode is not None else SearchMode("")
    except ValueError:
        checked_mode = SearchMode.HYBRID
        bad.append(FieldViolation("mode", f"must be one of {', '.join(m.value for m in SearchMode)}, got {mode!r}"))
    bad += collection_violations(collection)
    bad += metadata_violations(filters or {}, "filters")
    if min_score is not None and not math.isfinite(min_score):
        bad.append(FieldViolation("min_score", "must be a finite number"))
    if bad:
        raise InvalidArgument(bad)
    return QueryParams(text, top_k, checked_mode, collection, dict(filters or {}), min_score)


def document_violations(documents: Sequence[Document], path: str = "documents") -> list[FieldViolation]:
    """Why these documents cannot be stored: ids, sizes, metadata, duplicates; paths like ``documents[3].text``."""
    bad: list[FieldViolation] = []
    if not documents:
        return [FieldViolation(path, "must hold at least one document")]
    if len(documents) > MAX_DOCUMENTS:
        return [FieldViolation(path, f"at most {MAX_DOCUMENTS} documents per message, got {len(documents)}")]
    seen: dict[str, int] = {}
    for i, doc in enumerate(documents):
        at = f"{path}[{i}]"
        if not doc.doc_id.strip():
            bad.append(FieldViolation(f"{at}.id", "must not be empty"))
        elif len(doc.doc_id) > MAX_DOC_ID_CHARS:
            bad.append(FieldViolation(f"{at}.id", f"must be at most {MAX_DOC_ID_CHARS} characters"))
        elif doc.doc_id in seen:
            bad.append(FieldViolation(f"{at}.id", f"repeats {path}[{seen[doc.doc_id]}].id {quote(doc.doc_id)}"))
        else:
            seen[doc.doc_id] = i
        if len(doc.title) > MAX_TITLE_CHARS:
            bad.append(FieldViolation(f"{at}.title", f"must be at most {MAX_TITLE_CHARS} characters"))
        if not doc.text.strip():
            bad.append(FieldViolation(f"{at}.text", "must not be empty"))
        elif len(doc.text) > MAX_DOCUMENT_CHARS:
            bad.append(
                FieldViolation(f"{at}.text", f"must be at most {MAX_DOCUMENT_CHARS} characters, got {len(doc.text)}")
            )
        bad += metadata_violations(doc.metadata, f"{at}.metadata")
    return bad


def check_documents(documents: Sequence[Document], path: str = "documents") -> None:
    """Raise InvalidArgument naming every bad field of ``documents``."""
    bad = document_violations(documents, path)
    if bad:
        raise InvalidArgument(bad)
