"""The agent loop's conversation within the model's context: the tools' declarations are counted against it
(as a text the chat template renders besides the messages), and before each step after the first the newest
step's ROLE_TOOL messages are cut, by their own tokens per character, when the grown conversation would not leave
the answer its room. Earlier turns are never changed: the prompt keeps its prefix from step to step (the prefix
cache). An inference service that cannot count leaves the cut to ``truncate_prompt``.

Counting is a CountTokens call per step, skipped when the step fits by an estimate from above: the last step's
prompt and output tokens plus, for the turns it added, their UTF-8 bytes (a token holds at least one byte) and
framing tokens per message (gateway.prompt_budget.most_tokens).
"""

from __future__ import annotations

import json

from gateway.agent.plan import AgentPlan
from gateway.prompt import token_room
from gateway.prompt_budget import (
    MAX_COUNTED_CHARS,
    MAX_COUNTED_TEXTS,
    RESERVE_MARGIN_TOKENS,
    PromptBudget,
    most_tokens,
)
from gateway.stages.context import StageContext
from genmesh.messages import message_text
from genmesh.tool_messages import CUT_MARK, tool_turn
from genmesh.v1 import common_pb2, inference_pb2

SPARE = 0.9
"""The share of a cut result's estimated room it keeps: a cut's tokens per character are the whole text's."""


def declarations_text(agent: AgentPlan) -> str:
    """The tools as the template renders them, about (one JSON object a line, OpenAI's shape), for counting."""
    lines = []
    for tool in agent.tools.values():
        function = {"name": tool.name, "description": tool.declaration.description, "parameters": tool.schema}
        lines.append(json.dumps({"type": "function", "function": function}))
    return "\n".join(lines)[:MAX_COUNTED_CHARS]


async def fit_results(
    budget: PromptBudget,
    context: StageContext,
    messages: list[common_pb2.ChatMessage],
    newest: int,
    reserve: str,
    prior_tokens: int,
) -> None:
    """Cut ``messages[newest:]`` (ROLE_TOOL) in place so that the conversation, ``reserve`` and the answer's room
    fit the model's context; ``prior_tokens``: the last step's prompt and output tokens, which held everything
    before ``messages[newest - 1]`` (the step's assistant turn)."""
    fresh = messages[newest:][: MAX_COUNTED_TEXTS - 1]
    if not fresh:
        return
    room = token_room(await context.upstreams.context_length(), context.plan.sampling.max_tokens)
    if prior_tokens + sum(most_tokens(m) for m in messages[newest - 1 :]) <= room:
        return
    texts = [reserve, *(message_text(m) for m in fresh)]
    request = inference_pb2.CountTokensRequest(messages=messages, texts=texts)
    counted = await budget.count(context.upstreams, request, context.deadline)
    if counted is None:
        return
    room = token_room(counted.context_length_tokens, context.plan.sampling.max_tokens)
    reserved = counted.text_tokens[0] + RESERVE_MARGIN_TOKENS if reserve else 0
    over = counted.prompt_tokens + reserved - room
    results = sum(counted.text_tokens[1:])
    if over <= 0 or not results:
        return
    keep = max(0.0, (results - over) / results) * SPARE
    for offset, message in enumerate(fresh):
        text = message_text(message)
        cut = text[: max(0, int(len(text) * keep) - len(CUT_MARK))] + CUT_MARK
        messages[newest + offset] = tool_turn(message.tool_call_id, cut)
