"""The conversation the gateway sends to inference: the retrieved passages and the forced tool results in one
system message, then the client's turns unchanged (or the question as one user message).

Layout of the context text (what the chat template renders as the system turn): the passages, best first, each
``<title>\\n<text>``, separated by a blank line; then a blank line and one line per tool result,
``Tool <name>(<arguments>) returned: <result>``. When the client's first message is a ROLE_SYSTEM one, the context
is merged into it: the client's text first (its instructions lead), a blank line, then the context, so the model
always sees exactly one system turn before the conversation. With neither passages nor tool results no system
message is added. With the shipped model's template, a question with passages renders as
``<|bos|><passages>\\n\\nQuestion: <question>\\nAnswer:``: the tokens of the prompt the gateway built as text before.

The layout is prefix-cache friendly: what repeats across requests comes first and what varies last — the client's
system text, the passages (as retrieval ranked them), the tool results (in the order the client listed the calls,
not the order they finished: gateway.stages.inference), then the conversation, its newest turn last. Nothing that
changes per request (request ids, timestamps, scores) is written into the prompt, so two requests with the same
system text and sources share every token up to the question, and inference's prefix cache serves that much
(tests/gateway/test_prompt_prefix_sharing.py; bench/inference.py's ``prefix_ttft_ratio``).

The budget is counted with the model's tokenizer (gateway.prompt_budget: one CountTokens call per request); the
passages that fit (``fit_blocks``) go in whole, best first. Against an inference service too old to count, the
passages are trimmed to a character budget instead (3 characters per token, erring short: ``conversation``), and
inference keeps the prompt's tail if the estimate is still too long (``truncate_prompt``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from genmesh.messages import MAX_MESSAGE_CHARS, message_text
from genmesh.tool_messages import CUT_MARK
from genmesh.v1 import common_pb2

# Characters per token assumed when budgeting the prompt without a tokenizer; byte-level BPE on English averages
# more than this, so the estimate errs on the short side.
CHARS_PER_TOKEN = 3
MIN_CONTEXT_CHARS = 200
SEPARATOR = "\n\n"


@dataclass(frozen=True, slots=True)
class PromptPassage:
    """A retrieved passage as the prompt uses it."""

    title: str
    text: str


@dataclass(frozen=True, slots=True)
class PromptToolResult:
    """A tool call's outcome as the prompt uses it."""

    name: str
    arguments_json: str
    result: str


def token_room(context_length: int, max_tokens: int) -> int:
    """Tokens the prompt may take: the context less the answer's room, which inference reserves as
    ``min(max_tokens, context_length // 2)`` (engine.keep_prompt_tail)."""
    return context_length - min(max_tokens, context_length // 2)


def prompt_char_budget(context_length: int, max_tokens: int) -> int:
    """How many characters the prompt may use so that it and the answer fit the context (the guess)."""
    reserved = min(max_tokens, context_length // 2) + 8
    return max(MIN_CONTEXT_CHARS, (context_length - reserved) * CHARS_PER_TOKEN)


def passage_block(passage: PromptPassage) -> str:
    """A passage as the context shows it."""
    return f"{passage.title}\n{passage.text.strip()}"


def tools_text(tool_results: Sequence[PromptToolResult], limit: int) -> str:
    """The tool results' lines of the context, cut to ``limit`` characters (a tool may return up to 1 MiB; the
    system message holds at most MAX_MESSAGE_CHARS), the cut marked."""
    text = "\n".join(f"Tool {t.name}({t.arguments_json}) returned: {t.result}" for t in tool_results)
    return text if len(text) <= limit else text[: max(0, limit - len(CUT_MARK))] + CUT_MARK


def join_context(blocks: Sequence[str], tools: str) -> str:
    """The context: passage blocks, then the tool results, separated by blank lines."""
    return SEPARATOR.join([*blocks, tools] if tools else blocks)


def fit_blocks(block_tokens: Sequence[int], block_chars: Sequence[int], tokens: int, chars: int) -> list[int]:
    """The indexes of the blocks kept, best (first) first: each that fits in what the ones before left of
    ``tokens`` and ``chars`` (a block counts its separator); one that does not is dropped, the next still tried."""
    kept: list[int] = []
    for index, (cost, size) in enumerate(zip(block_tokens, block_chars, strict=True)):
        if cost <= tokens and size + len(SEPARATOR) <= chars:
            kept.append(index)
            tokens -= cost
            chars -= size + len(SEPARATOR)
    return kept


def context_text(passages: Sequence[PromptPassage], tools: str, room: int) -> str:
    """The system turn's context: passages (best first, trimmed to ``room`` characters), then the tool results'
    text (kept whole, and counted against ``room`` first)."""
    room -= len(tools) + len(SEPARATOR) if tools else 0
    blocks: list[str] = []
    for passage in passages:
        if room <= 0:
            break
        block = passage_block(passage)[:room]
        blocks.append(block)
        room -= len(block) + len(SEPARATOR)
    return join_context(blocks, tools)


def client_turns(question: str, messages: Sequence[common_pb2.ChatMessage]) -> list[common_pb2.ChatMessage]:
    """The client's conversation: its messages, or the question as one user message."""
    return list(messages) or [_text(common_pb2.ROLE_USER, question)]


def context_room(turns: Sequence[common_pb2.ChatMessage]) -> int:
    """Characters the context may take so that the system message stays within one message's bound."""
    lead = message_text(turns[0]) if turns[0].role == common_pb2.ROLE_SYSTEM else ""
    return MAX_MESSAGE_CHARS - len(lead) - len(SEPARATOR)


def with_context(turns: Sequence[common_pb2.ChatMessage], context: str) -> tuple[list[common_pb2.ChatMessage], bool]:
    """``turns`` with ``context`` in their system message, and whether one was put before them (so that
    inference's ``messages[i]`` is the client's ``messages[i - 1]``). An empty context adds nothing."""
    if not context:
        return list(turns), False
    if turns[0].role == common_pb2.ROLE_SYSTEM:
        lead = message_text(turns[0])
        merged = common_pb2.ChatMessage()
        merged.CopyFrom(turns[0])
        merged.ClearField("content")
        merged.content.add(text=f"{lead}{SEPARATOR}{context}" if lead else context)
        return [merged, *turns[1:]], False
    return [_text(common_pb2.ROLE_SYSTEM, context), *turns], True


def conversation(
    question: str,
    messages: Sequence[common_pb2.ChatMessage],
    passages: Sequence[PromptPassage],
    tool_results: Sequence[PromptToolResult],
    budget_chars: int,
) -> tuple[list[common_pb2.ChatMessage], bool]:
    """The messages for GenerateRequest.messages by the character guess, and whether a system message was put
    before the client's. ``budget_chars`` bounds the whole prompt; the client's turns are kept whole and the
    passages get what is left (at most one message's worth)."""
    turns = client_turns(question, messages)
    used = sum(len(message_text(m)) for m in turns) + 64 * len(turns)  # the template's own text per turn, roughly
    room = min(budget_chars - used, context_room(turns))
    return with_context(turns, context_text(passages, tools_text(tool_results, context_room(turns)), room))


def client_field(name: str, asked: bool, shifted: bool) -> str:
    """A GenerateRequest (or CountTokensRequest) field named as the gateway request's: a question became the
    messages (``asked``), and the client's ``messages[i]`` is inference's ``messages[i + 1]`` when a system
    message went first (``shifted``)."""
    if name == "prompt" or not name.startswith("messages"):
        return "question" if name == "prompt" and asked else name
    if asked:
        return "question"
    if shifted and name.startswith("messages["):
        index, _, rest = name[len("messages[") :].partition("]")
        if index.isdigit():
            return "messages" if index == "0" else f"messages[{int(index) - 1}]{rest}"
    return name


def _text(role: common_pb2.Role.ValueType, text: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=role, content=[common_pb2.ContentPart(text=text)])
