"""Streaming text output: incremental detokenization that never emits half a UTF-8 character, and stop sequences."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer

REPLACEMENT = "\ufffd"
PROMPT_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """Turns a growing list of generated token ids into text deltas.

    Uses the prefix-offset / read-offset scheme: the text of the last few tokens already emitted
    (``ids[prefix:read]``) is decoded together with the new tokens (``ids[prefix:]``) and only the
    difference is emitted. While that text ends in U+FFFD the new tokens hold an incomplete byte
    sequence (byte-level BPE can split a character across tokens), so nothing is emitted until a
    later token completes it. The tail of the prompt serves as the initial context so tokenizers
    that treat the first token specially (e.g. stripping a leading space) decode mid-text correctly.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int] = (), skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        context = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:]) if prompt_ids else []
        self._ids: list[int] = context
        self._prefix = 0
        self._read = len(context)
        self._context = len(context)

    @property
    def token_ids(self) -> list[int]:
        """The generated ids added so far (prompt context excluded)."""
        return self._ids[self._context :]

    def _decode(self, ids: list[int]) -> str:
        text: str = self._tokenizer.decode(ids, skip_special_tokens=self._skip)
        return text

    def add(self, token_id: int) -> str:
        """Append one token; return the text that is now complete (possibly empty)."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT):
            return ""
        self._prefix = self._read
        self._read = len(self._ids)
        return new_text[len(prefix_text) :]

    def add_many(self, token_ids: Iterable[int]) -> str:
        """Append several tokens; return the complete text they add."""
        return "".join(self.add(t) for t in token_ids)

    def flush(self) -> str:
        """Return whatever is still held back (an incomplete character decodes to U+FFFD) and reset the hold."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read
        self._read = len(self._ids)
        return new_text[len(prefix_text) :]


class StopSequenceFilter:
    """Finds stop sequences in streamed text, across chunk boundaries, and keeps them out of the output.

    Text that could be the beginning of a stop sequence is held back until the following text shows
    whether the sequence completes (then it and everything after it is dropped) or not (then it is
    released). After a match ``stopped`` is true and ``matched`` names the stop sequence.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """Add streamed text; return the part that can be released now."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buf = self._held + text
        best: tuple[int, str] | None = None
        for stop in self._stops:
            index = buf.find(stop)
            if index >= 0 and (best is None or index < best[0]):
                best = (index, stop)
        if best is not None:
            self.stopped = True
            self.matched = best[1]
            self._held = ""
            return buf[: best[0]]
        hold = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(buf)), hold, -1):
                if buf.endswith(stop[:k]):
                    hold = k
                    break
        self._held = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        """Release the held-back text (the stream ended without completing a stop sequence)."""
        if self.stopped:
            return ""
        out, self._held = self._held, ""
        return out
