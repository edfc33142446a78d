"""Structured output by constrained decoding: a ResponseFormat becomes a per-sequence matcher whose token bitmask
masks the logits before every draw, so that the model can only write what the format accepts.

Engine: llguidance (Rust, via its Python wheel), chosen over xgrammar because
- it builds its token trie from the ``tokenizer.json`` text of a ``tokenizers.Tokenizer`` alone; xgrammar's
  ``TokenizerInfo`` is built from a transformers tokenizer and its wheel requires torch and transformers, which
  the inference image must not need at run time;
- it reads JSON Schema (the widest coverage of the two: $ref/$defs, anyOf/oneOf, patterns, formats, min/max),
  Lark (its own native syntax), GBNF (converted to Lark by its ``gbnf_to_lark``) and Rust regexes;
- masks take tens of microseconds per token with no per-grammar precompilation, are filled for a whole batch in
  parallel with the GIL released (``LLExecutor``), and compiled matchers are copied cheaply (``deep_copy``).

Behaviour: the first token after the prompt is masked too; once the format is complete only EOS is allowed, so
the sequence ends with STOP. ``max_tokens`` may cut it first (LENGTH: the text then may not parse), and stop
sequences still apply (STOP_SEQUENCE: likewise). ``min_tokens`` and ``ignore_eos`` are refused with a format.
A matcher that breaks mid-stream (a bug, not bad input) ends its sequence with an error, never a hang.

``compiler``: ResponseFormat → validated grammar → a ``TokenConstraint`` per request (grammars cached in an LRU);
``bitmask``: batch masks, filled off the critical path, applied to logits rows; ``tool_grammar``: a request's tool
calls as a Lark grammar (a ResponseFormat like any other, so the cache and the prefetch serve it too).
"""

from services.inference.constraints.bitmask import MaskPrefetcher, apply_bitmask, fill_bitmask
from services.inference.constraints.compiler import GrammarCompiler, TokenConstraint

__all__ = ["GrammarCompiler", "MaskPrefetcher", "TokenConstraint", "apply_bitmask", "fill_bitmask"]
