"""ResponseFormat → llguidance grammar → one ``TokenConstraint`` per request.

Compiling happens at admission, on the event loop: a pristine matcher per (kind, text) is kept in a small LRU and
each request gets a ``deep_copy`` of it, so requests sharing a schema compile it once. An invalid schema, regex or
grammar is ``InvalidArgument`` naming the request field that carries it, never an internal error.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import llguidance
from llguidance.gbnf_to_lark import any_to_lark
from tokenizers import Tokenizer

from genmesh.errors import InvalidArgument
from genmesh.response_format import FormatKind, ResponseFormat

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

MAX_ERROR_CHARS = 400
"""An error from the grammar compiler quotes the client's text; it is cut to this many characters."""


JSON_OPTIONS: JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}
"""JSON is written on one line with the usual separators: free whitespace lets a small model pad forever."""


def json_rule(schema: dict[str, Any], lenient: bool = False) -> str:
    """A Lark rule body: ``%json`` of ``schema`` on one line, with response_format's JSON options.

    ``lenient``: keywords llguidance does not implement (``if``/``then``, ``dependentRequired``, ...) are left
    unenforced instead of refused: tools' schemas (the gateway validates the arguments with jsonschema anyway);
    a response_format stays strict."""
    options: dict[str, Any] = {**JSON_OPTIONS, "lenient": True} if lenient else dict(JSON_OPTIONS)
    return "%json " + json.dumps({**schema, "x-guidance": options})


@lru_cache(maxsize=256)
def schema_error(schema_json: str, lenient: bool = False) -> str | None:
    """Why llguidance cannot compile the JSON Schema ``schema_json`` as a grammar (None: it can); ``lenient`` as in
    ``json_rule``."""
    try:
        grammar = llguidance.LLMatcher.grammar_from_lark("start: " + json_rule(json.loads(schema_json), lenient))
        error = llguidance.LLMatcher.validate_grammar(grammar)
    except ValueError as failure:
        error = str(failure)
    return " ".join(error.split())[:400] or None


def _short(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - 1] + "…"


def grammar_source(fmt: ResponseFormat) -> str:
    """The llguidance grammar of ``fmt`` (not yet checked); InvalidArgument when a GBNF grammar does not convert."""
    kind = fmt.kind
    if kind in (FormatKind.JSON_SCHEMA, FormatKind.JSON_OBJECT):
        return llguidance.LLMatcher.grammar_from_json_schema(fmt.text, overrides=JSON_OPTIONS)
    if kind is FormatKind.REGEX:
        return llguidance.LLMatcher.grammar_from_regex(fmt.text)
    if kind is FormatKind.CHOICE:
        choices: list[str] = json.loads(fmt.text)
        return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in choices))
    text = fmt.text
    if kind is FormatKind.EBNF:
        try:
            text = any_to_lark(text)
        except Exception as error:  # GbnfToLarkError and whatever a malformed grammar trips in the converter
            raise InvalidArgument.field(fmt.field, _short(f"not a valid GBNF grammar: {error}")) from None
    return llguidance.LLMatcher.grammar_from_lark(text)


class TokenConstraint:
    """One sequence's matcher: which tokens may come next, and advancing by the token drawn.

    Used on the engine thread only (the mask fill may run on its worker while the forward pass runs, never at
    the same time as ``advance``).
    """

    __slots__ = ("matcher", "vocab_size")

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self.matcher = matcher
        #: Token ids its masks cover (the tokenizer's).
        self.vocab_size = vocab_size

    def advance(self, token_id: int) -> bool:
        """Consume the drawn token; False when the matcher refused it (then ``error`` says why)."""
        return self.matcher.consume_token(token_id)

    @property
    def error(self) -> str | None:
        """Why the matcher failed (a bug or a resource limit, not bad input), None while it is sound."""
        return _short(self.matcher.get_error() or "the matcher failed") if self.matcher.is_error() else None


class GrammarCompiler:
    """Compiles ResponseFormats for one tokenizer; keeps the last ``cache_size`` compiled grammars."""

    def __init__(self, tokenizer: Tokenizer, eos_token_ids: Iterable[int], cache_size: int = 64) -> None:
        self._source = tokenizer
        self._eos = list(eos_token_ids)
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._cache: OrderedDict[tuple[str, str], llguidance.LLMatcher] = OrderedDict()
        self._size = cache_size
        self._lock = threading.Lock()

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        """llguidance's view of the tokenizer (built from its tokenizer.json text on first use)."""
        if self._tokenizer is None:
            self._tokenizer = llguidance.LLTokenizer(self._source.to_str(), eos_token=self._eos or None)
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Token ids the masks cover; a model's larger lm_head ids are never allowed."""
        return self.tokenizer.vocab_size

    def constraint(self, fmt: ResponseFormat | None) -> TokenConstraint | None:
        """A fresh matcher for ``fmt`` (None: free text); InvalidArgument naming the field when ``fmt`` is invalid."""
        if fmt is None:
            return None
        with self._lock:
            pristine = self._cache.get(fmt.key)
            if pristine is not None:
                self._cache.move_to_end(fmt.key)
        if pristine is None:
            pristine = self._compile(fmt)
            with self._lock:
                self._cache[fmt.key] = pristine
                while len(self._cache) > self._size:
                    self._cache.popitem(last=False)
        return TokenConstraint(pristine.deep_copy(), self.vocab_size)

    def _compile(self, fmt: ResponseFormat) -> llguidance.LLMatcher:
        try:
            source = grammar_source(fmt)
        except ValueError as error:
            raise InvalidArgument.field(fmt.field, _short(str(error))) from None
        matcher = llguidance.LLMatcher(self.tokenizer, source, log_level=0)
        if matcher.is_error():
            raise InvalidArgument.field(fmt.field, _short(matcher.get_error()))
        probe = matcher.deep_copy()
        probe.compute_bitmask()  # a format no text matches fails at its first mask
        if probe.is_error():
            raise InvalidArgument.field(fmt.field, "no output matches it")
        return matcher

    def __len__(self) -> int:
        return len(self._cache)
