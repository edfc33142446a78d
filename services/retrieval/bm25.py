"""Okapi BM25 over chunks: a tokenizer for technical English and an inverted index with a title boost."""

from __future__ import annotations

import heapq
import keyword
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from services.retrieval.corpus import Chunk

_TOKEN = re.compile(r"[a-z0-9_]+")
_ENGLISH_STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her
    here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
    of off on once only or other our ours ourselves out over own same she should so some such than that the
    their theirs them themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves""".split()  # noqa: SIM905
)
STOPWORDS = _ENGLISH_STOPWORDS - frozenset(word.lower() for word in [*keyword.kwlist, *keyword.softkwlist])
"""English stopwords that are dropped, minus Python's keywords (``with``, ``for``, ``in`` are topics here)."""


def tokenize(text: str) -> list[str]:
    """Lowercase ``text`` and split it on anything but letters, digits and ``_``, dropping stopwords.

    Identifiers stay whole (``__enter__``, ``async_gen``) and also contribute their underscore-separated
    parts (``enter``; ``async``, ``gen``), so a query for either form matches. Single letters are dropped.
    """
    tokens: list[str] = []
    for raw in _TOKEN.findall(text.lower()):
        if "_" in raw:
            if raw.strip("_"):
                tokens.append(raw)
                tokens.extend(part for part in raw.split("_") if len(part) > 1 and part not in STOPWORDS)
        elif (len(raw) > 1 or raw.isdigit()) and raw not in STOPWORDS:
            tokens.append(raw)
    return tokens


@dataclass(frozen=True, slots=True)
class BM25Params:
    """Okapi BM25 knobs: term-frequency saturation ``k1``, length normalisation ``b``, title weight."""

    k1: float = 1.2
    b: float = 0.75
    title_boost: float = 2.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.k1) and self.k1 >= 0):
            raise ValueError(f"k1 must be a finite number >= 0, got {self.k1!r}")
        if not (math.isfinite(self.b) and 0.0 <= self.b <= 1.0):
            raise ValueError(f"b must lie in [0, 1], got {self.b!r}")
        if not (math.isfinite(self.title_boost) and self.title_boost >= 0):
            raise ValueError(f"title_boost must be a finite number >= 0, got {self.title_boost!r}")


@dataclass(frozen=True, slots=True)
class ScoredChunk:
    """A chunk and its BM25 score for one query."""

    chunk: Chunk
    score: float


class BM25Index:
    """An inverted index of chunks scored with Okapi BM25 (a BM25F-style weighted title field).

    A chunk's term frequency is ``tf(body) + title_boost * tf(title)`` and its length is weighted the same
    way. Per-posting scores are precomputed lazily after each ``add``, so a query costs one pass over the
    postings of its terms.
    """

    def __init__(self, chunks: Iterable[Chunk] = (), params: BM25Params | None = None) -> None:
        self.params = params if params is not None else BM25Params()
        self._chunks: list[Chunk] = []
        self._lengths: list[float] = []
        self._postings: dict[str, list[tuple[int, float]]] = {}
        self._scores: dict[str, tuple[list[int], list[float]]] = {}
        self._stale = False
        self.add(chunks)

    def __len__(self) -> int:
        return len(self._chunks)

    @property
    def vocabulary_size(self) -> int:
        """Number of distinct terms indexed."""
        return len(self._postings)

    def add(self, chunks: Iterable[Chunk]) -> None:
        """Index more chunks; they rank after earlier ones on equal scores."""
        boost = self.params.title_boost
        title_cache: dict[str, Counter[str]] = {}
        for chunk in chunks:
            index = len(self._chunks)
            body = Counter(tokenize(chunk.text))
            title = title_cache.get(chunk.title)
            if title is None:
                title = title_cache[chunk.title] = Counter(tokenize(chunk.title))
            weighted: dict[str, float] = {term: float(count) for term, count in body.items()}
            for term, count in title.items():
                weighted[term] = weighted.get(term, 0.0) + boost * count
            self._chunks.append(chunk)
            self._lengths.append(float(sum(body.values())) + boost * sum(title.values()))
            for term, tf in weighted.items():
                if tf > 0:
                    self._postings.setdefault(term, []).append((index, tf))
            self._stale = True

    def _rebuild(self) -> None:
        """Precompute each posting's BM25 contribution for the current corpus statistics."""
        n = len(self._chunks)
        average = (sum(self._lengths) / n) if n else 0.0
        k1, b = self.params.k1, self.params.b
        norms = [k1 * (1.0 - b + b * (length / average if average else 0.0)) for length in self._lengths]
        scores: dict[str, tuple[list[int], list[float]]] = {}
        for term, postings in self._postings.items():
            df = len(postings)
            idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
            ids = [index for index, _ in postings]
            values = [idf * tf * (k1 + 1.0) / (tf + norms[index]) for index, tf in postings]
            scores[term] = (ids, values)
        self._scores = scores
        self._stale = False

    def search(self, query: str, top_k: int = 10) -> list[ScoredChunk]:
        """The ``top_k`` best chunks for ``query``, best first; equal scores keep indexing order.

        Only chunks sharing at least one term with the query are returned, so the list may be shorter
        than ``top_k`` (and is empty for a query made only of stopwords).
        """
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if self._stale:
            self._rebuild()
        totals: dict[int, float] = {}
        for term, count in Counter(tokenize(query)).items():
            entry = self._scores.get(term)
            if entry is None:
                continue
            ids, values = entry
            get = totals.get
            for index, value in zip(ids, values, strict=True):
                totals[index] = get(index, 0.0) + count * value
        best = heapq.nsmallest(top_k, totals.items(), key=lambda item: (-item[1], item[0]))
        return [ScoredChunk(self._chunks[index], score) for index, score in best]
