"""CountTokens: the tokens a conversation takes as Generate renders it, and of texts alone, so that the gateway
can fit retrieved passages to the context with the model's own tokenizer instead of a characters-per-token guess.

The conversation is rendered with the chat template and its generation prompt and encoded as Generate encodes
it (nothing added: the template holds the special tokens); each text is encoded alone without special tokens.
Counts of pieces are additive up to a token at each seam (a BPE merge across it), which callers leave room for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tokenizers import Tokenizer

from genmesh.errors import FieldViolation, InvalidArgument
from genmesh.messages import message_violations, template_messages
from genmesh.v1 import inference_pb2
from services.inference.chat_template import ChatTemplate

MAX_TEXTS = 1024
MAX_TEXT_CHARS = 65_536


def text_violations(texts: Sequence[str]) -> list[FieldViolation]:
    """What is wrong with CountTokensRequest.texts: too many, or one too long (each named)."""
    if len(texts) > MAX_TEXTS:
        return [FieldViolation("texts", f"at most {MAX_TEXTS} texts, got {len(texts)}")]
    return [
        FieldViolation(f"texts[{i}]", f"at most {MAX_TEXT_CHARS} characters, got {len(text)}")
        for i, text in enumerate(texts)
        if len(text) > MAX_TEXT_CHARS
    ]


def count_tokens(
    request: inference_pb2.CountTokensRequest,
    tokenizer: Tokenizer,
    context_length: int,
    template: Callable[[], ChatTemplate],
) -> inference_pb2.CountTokensResponse:
    """The answer to ``request``; InvalidArgument naming each bad field. ``template`` is asked only when there are
    messages (it raises FailedPrecondition for a model whose template does not compile)."""
    bad = text_violations(request.texts)
    if request.messages:
        bad = [*message_violations(request.messages), *bad]
    if bad:
        raise InvalidArgument(bad)
    prompt_tokens = 0
    if request.messages:
        rendered = template().render(template_messages(request.messages))
        prompt_tokens = len(tokenizer.encode(rendered, add_special_tokens=False).ids)
    texts = list(request.texts)
    counted = tokenizer.encode_batch(texts, add_special_tokens=False) if texts else []
    return inference_pb2.CountTokensResponse(
        prompt_tokens=prompt_tokens,
        text_tokens=[len(encoding.ids) for encoding in counted],
        context_length_tokens=context_length,
    )
