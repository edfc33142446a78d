"""The text_stats tool: counts characters, words, sentences and lines of a text, and its commonest words."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from services.tools.tool import Tool

MAX_TEXT_CHARS = 32_000
"""Longest text accepted, in characters."""
TOP_WORDS = 5
WORDS_PER_MINUTE = 200
_WORD = re.compile("[^\\W_]+(?:['\u2019-][^\\W_]+)*")
_SENTENCE_END = re.compile(r"[.!?…]+(?=\s|$)")


def text_stats(text: str) -> dict[str, Any]:
    """Statistics of ``text``: characters, words, sentences, lines, paragraphs, commonest words."""
    words = _WORD.findall(text)
    lowered = Counter(word.lower() for word in words)
    stripped = text.strip()
    sentences = len(_SENTENCE_END.findall(stripped))
    if stripped and not _SENTENCE_END.search(stripped[-1:] + " "):
        sentences += 1  # a last sentence without its full stop
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    return {
        "characters": len(text),
        "characters_excluding_spaces": sum(1 for char in text if not char.isspace()),
        "words": len(words),
        "unique_words": len(lowered),
        "sentences": sentences,
        "lines": len(text.splitlines()),
        "paragraphs": len(paragraphs),
        "average_word_length": round(sum(map(len, words)) / len(words), 2) if words else 0.0,
        "reading_time_s": round(len(words) * 60 / WORDS_PER_MINUTE, 1),
        "top_words": [{"word": word, "count": count} for word, count in lowered.most_common(TOP_WORDS)],
    }


def text_stats_schema() -> dict[str, Any]:
    """The JSON Schema of text_stats's arguments (a fresh copy)."""
    return {
        "type": "object",
        "properties": {
            "text": {"type": "string", "description": "The text to measure.", "maxLength": MAX_TEXT_CHARS},
        },
        "required": ["text"],
        "additionalProperties": False,
    }


def text_stats_tool() -> Tool:
    """The built-in ``text_stats`` tool."""
    return Tool(
        name="text_stats",
        description=(
            "Count the characters, words, unique words, sentences, lines and paragraphs of a text, with its "
            "average word length, reading time and most frequent words."
        ),
        parameters=text_stats_schema(),
        handler=lambda arguments: text_stats(arguments["text"]),
        timeout_s=2.0,
        idempotent=True,
        blocking=True,
    )
