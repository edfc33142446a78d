"""Builds the model's prompt from the question, the retrieved passages and the tool results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Characters per token assumed when budgeting the prompt; byte-level BPE on English averages
# more than this, so the estimate errs on the short side.
CHARS_PER_TOKEN = 3
MIN_CONTEXT_CHARS = 200


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


def build_prompt(
    question: str,
    passages: Sequence[PromptPassage],
    tool_results: Sequence[PromptToolResult],
    budget_chars: int,
) -> str:
    """The prompt: context passages first (best first, trimmed to the budget), then tools, then the question.

    The question and tool results are kept whole; passages share what is left of the budget.
    """
    tail_parts = [f"Tool {t.name}({t.arguments_json}) returned: {t.result}" for t in tool_results]
    tail_parts.append(f"Question: {question}\nAnswer:")
    tail = "\n".join(tail_parts)
    room = budget_chars - len(tail) - 2
    context: list[str] = []
    for passage in passages:
        if room <= 0:
            break
        block = f"{passage.title}\n{passage.text.strip()}"[:room]
        context.append(block)
        room -= len(block) + 2
    return "\n\n".join([*context, tail])
