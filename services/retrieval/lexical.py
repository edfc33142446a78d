"""The keyword side of search: a tokenizer for technical English and the SQLite FTS5 terms and query built from it.

SQLite's own tokenizers cannot be extended from Python, so text is tokenized here and FTS5 indexes the tokens
(joined by spaces, split again by FTS5's ``unicode61`` tokenizer that keeps ``_`` inside tokens). FTS5 then ranks
with Okapi BM25 over a title and a body column.
"""

from __future__ import annotations

import keyword
import re

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

FTS_TOKENIZER = "porter unicode61 remove_diacritics 0 tokenchars '_'"
"""The FTS5 tokenizer the index uses: it splits the space-joined output of ``tokenize`` again and stems each
token with Porter's algorithm (``generators`` matches ``generator``), in documents and queries alike."""
LEXICAL_VERSION = "2"
"""Changes whenever ``tokenize`` or FTS_TOKENIZER does: a store indexed by another version is re-indexed."""
TITLE_WEIGHT = 2.0
"""BM25 weight of a title match relative to a body match (FTS5 column weights)."""


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


def index_terms(text: str) -> str:
    """What FTS5 indexes for ``text``: its tokens joined by spaces."""
    return " ".join(tokenize(text))


def match_expression(query: str) -> str | None:
    """An FTS5 MATCH expression that ORs the distinct tokens of ``query``; None when it has none.

    Tokens are made of ``[a-z0-9_]`` only, so quoting each one makes it a plain term (never an operator).
    """
    terms = dict.fromkeys(tokenize(query))
    if not terms:
        return None
    return " OR ".join(f'"{term}"' for term in terms)
