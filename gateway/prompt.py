"""The conversation the gateway sends to inference: the retrieved passages and the forced tool results in one
system message, then the client's turns unchanged (or the question as one user message).

Layout of the context text (what the chat template renders as the system turn): the passages, best first, each
``<title>\\n<text>``, separated by a blank line; then a blank line and one line per tool result,
``Tool <name>(<arguments>) returned: <result>``. When the client's first message is a ROLE_SYSTEM one, the context
is merged into it: the client's text first (its instructions lead), a blank line, then the context, so the model
always sees exactly one system turn before the conversation. With neither passages nor tool results no system
message is added. With the shipped model's template, a question with passages renders as
``<|bos|><passages>\\n\\nQuestion: <question>\\nAnswer:``: the tokens of the prompt the gateway built as text before.

The passages are trimmed to a character budget (3 characters per token, erring short); inference keeps the
prompt's tail if the estimate is still too long (``truncate_prompt``).
TODO(#15), not done: count with the real tokenizer through a small inference RPC (render + count: the messages
without the context, and each passage block), so that the layout stays here; see the lead's notes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from genmesh.messages import MAX_MESSAGE_CHARS, message_text
from genmesh.v1 import common_pb2

# Characters per token assumed when budgeting the prompt; byte-level BPE on English averages
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


def prompt_char_budget(context_length: int, max_tokens: int) -> int:
    """How many characters the prompt may use so that it and the answer fit the context."""
    reserved = min(max_tokens, context_length // 2) + 8
    return max(MIN_CONTEXT_CHARS, (context_length - reserved) * CHARS_PER_TOKEN)


def context_text(passages: Sequence[PromptPassage], tool_results: Sequence[PromptToolResult], room: int) -> str:
    """The system turn's context: passages (best first, trimmed to ``room`` characters), then the tool results
    (kept whole, and counted against ``room`` first)."""
    tools = "\n".join(f"Tool {t.name}({t.arguments_json}) returned: {t.result}" for t in tool_results)
    room -= len(tools) + len(SEPARATOR) if tools else 0
    blocks: list[str] = []
    for passage in passages:
        if room <= 0:
            break
        block = f"{passage.title}\n{passage.text.strip()}"[:room]
        blocks.append(block)
        room -= len(block) + len(SEPARATOR)
    return SEPARATOR.join([*blocks, tools] if tools else blocks)


def conversation(
    question: str,
    messages: Sequence[common_pb2.ChatMessage],
    passages: Sequence[PromptPassage],
    tool_results: Sequence[PromptToolResult],
    budget_chars: int,
) -> tuple[list[common_pb2.ChatMessage], bool]:
    """The messages for GenerateRequest.messages, and whether a system message was put before the client's
    (so that inference's ``messages[i]`` is the client's ``messages[i - 1]``).

    ``messages`` empty: the conversation is ``question`` as one user message. ``budget_chars`` bounds the whole
    prompt; the client's turns are kept whole and the passages get what is left (at most one message's worth).
    """
    turns = list(messages) or [_text(common_pb2.ROLE_USER, question)]
    client_system = turns[0].role == common_pb2.ROLE_SYSTEM
    lead = message_text(turns[0]) if client_system else ""
    used = sum(len(message_text(m)) for m in turns) + 64 * len(turns)  # the template's own text per turn, roughly
    room = min(budget_chars - used, MAX_MESSAGE_CHARS - len(lead) - len(SEPARATOR))
    context = context_text(passages, tool_results, room)
    if not context:
        return turns, False
    if client_system:
        merged = common_pb2.ChatMessage()
        merged.CopyFrom(turns[0])
        merged.ClearField("content")
        merged.content.add(text=f"{lead}{SEPARATOR}{context}" if lead else context)
        return [merged, *turns[1:]], False
    return [_text(common_pb2.ROLE_SYSTEM, context), *turns], True


def _text(role: common_pb2.Role.ValueType, text: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=role, content=[common_pb2.ContentPart(text=text)])
