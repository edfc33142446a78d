"""The gateway's prompt layout keeps what repeats across requests first: two requests with the same system text and
sources but different questions render (the shipped model's chat template and tokenizer) to token ids that agree
up to the question, so the inference engine's prefix cache serves the whole context from cache."""

from __future__ import annotations

import pytest

from gateway.prompt import PromptPassage, PromptToolResult, conversation
from genmesh.messages import template_messages
from genmesh.v1 import common_pb2
from services.inference.chat_template import ChatTemplate
from services.inference.models.loader import LoadedModel, load_model
from services.inference.shipped_model import shipped_model

SYSTEM = "Answer from the passages; name the passage you used."
PASSAGES = [
    PromptPassage("Generators", "A generator function returns an iterator; each yield suspends it. " * 6),
    PromptPassage("The with statement", "The with statement wraps a block in a context manager's methods. " * 6),
    PromptPassage("Exceptions", "An exception handler runs when the try clause raises a matching exception. " * 6),
]
TOOLS = [PromptToolResult("calculator", '{"expression": "2**16"}', '{"value": 65536}')]


@pytest.fixture(scope="module")
def shipped() -> LoadedModel:
    return load_model(shipped_model(), device="cpu")


def text(role: common_pb2.Role.ValueType, content: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=role, content=[common_pb2.ContentPart(text=content)])


def rendered_ids(model: LoadedModel, turns: list[common_pb2.ChatMessage], question: str) -> tuple[list[int], str]:
    """The token ids inference prefills for this gateway request, and the prompt text."""
    messages, _ = conversation(question, turns, PASSAGES, TOOLS, budget_chars=100_000)
    prompt = ChatTemplate(model.chat_template, special_tokens=model.special_tokens).render(template_messages(messages))
    return model.encode_rendered(prompt), prompt


def shared_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


@pytest.mark.parametrize("system", [SYSTEM, ""], ids=["client-system-text", "question-only"])
def test_two_questions_over_the_same_sources_share_every_token_before_the_question(
    shipped: LoadedModel, system: str
) -> None:
    questions = ["What does yield do?", "Why would a with statement be used around a file?"]
    lead = [text(common_pb2.ROLE_SYSTEM, system)] if system else []
    (first, prompt), (second, _) = (
        rendered_ids(shipped, [*lead, text(common_pb2.ROLE_USER, q)] if system else [], q) for q in questions
    )
    head = prompt[: prompt.index(questions[0])]  # the system text, the passages, the tool results, "Question:"
    assert head.startswith(f"<|bos|>{system}\n\nGenerators\n" if system else "<|bos|>Generators\n")
    assert "calculator" in head
    head_tokens = len(shipped.encode_rendered(head.rstrip()))  # the space before the question may merge with it
    shared = shared_prefix(first, second)
    assert shared >= head_tokens > 200
    assert len(first) - shared < 20 and len(second) - shared < 25  # only the question and "Answer:" differ


def test_a_conversation_s_history_is_shared_too_only_its_last_turn_differs(shipped: LoadedModel) -> None:
    history = [
        text(common_pb2.ROLE_SYSTEM, SYSTEM),
        text(common_pb2.ROLE_USER, "Name a statement."),
        text(common_pb2.ROLE_ASSISTANT, "The with statement."),
    ]
    first, _ = rendered_ids(shipped, [*history, text(common_pb2.ROLE_USER, "What does it do?")], "What does it do?")
    second, prompt = rendered_ids(
        shipped, [*history, text(common_pb2.ROLE_USER, "When is it used?")], "When is it used?"
    )
    history_tokens = len(shipped.encode_rendered(prompt[: prompt.rindex("Question:")]))
    assert shared_prefix(first, second) >= history_tokens > 200
