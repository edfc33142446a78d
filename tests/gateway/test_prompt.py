"""The conversation the gateway sends: passages and tool results in one system message before the client's turns."""

from __future__ import annotations

from gateway.prompt import (
    PromptPassage,
    PromptToolResult,
    context_text,
    conversation,
    fit_blocks,
    prompt_char_budget,
    token_room,
    tools_text,
)
from genmesh.messages import MAX_MESSAGE_CHARS, message_text
from genmesh.tool_messages import CUT_MARK
from genmesh.v1 import common_pb2

PASSAGES = [PromptPassage("yield", "The yield expression ...  "), PromptPassage("return", "The return statement ...")]
TOOLS = [PromptToolResult("calculator", '{"expression": "1+1"}', '{"value": 2}')]


def text(role: common_pb2.Role.ValueType, content: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=role, content=[common_pb2.ContentPart(text=content)])


def roles_and_texts(messages: list[common_pb2.ChatMessage]) -> list[tuple[int, str]]:
    return [(m.role, message_text(m)) for m in messages]


def test_a_question_becomes_one_user_message_after_the_context() -> None:
    messages, shifted = conversation("What is yield?", [], PASSAGES, TOOLS, budget_chars=10_000)
    assert shifted
    assert roles_and_texts(messages) == [
        (
            common_pb2.ROLE_SYSTEM,
            "yield\nThe yield expression ...\n\nreturn\nThe return statement ...\n\n"
            'Tool calculator({"expression": "1+1"}) returned: {"value": 2}',
        ),
        (common_pb2.ROLE_USER, "What is yield?"),
    ]


def test_without_passages_or_tool_results_no_system_message_is_added() -> None:
    messages, shifted = conversation("q?", [], [], [], budget_chars=10_000)
    assert not shifted and roles_and_texts(messages) == [(common_pb2.ROLE_USER, "q?")]


def test_the_client_s_turns_follow_unchanged_and_its_system_message_leads_the_merged_one() -> None:
    client = [
        text(common_pb2.ROLE_SYSTEM, "Be brief."),
        text(common_pb2.ROLE_USER, "Name a statement."),
        text(common_pb2.ROLE_ASSISTANT, "yield"),
        text(common_pb2.ROLE_USER, "What does it do?"),
    ]
    messages, shifted = conversation("What does it do?", client, PASSAGES[:1], [], budget_chars=10_000)
    assert not shifted
    assert roles_and_texts(messages)[0] == (common_pb2.ROLE_SYSTEM, "Be brief.\n\nyield\nThe yield expression ...")
    assert messages[1:] == client[1:]
    without_system, shifted = conversation("What does it do?", client[1:], PASSAGES[:1], [], budget_chars=10_000)
    assert shifted and without_system[1:] == client[1:]
    assert roles_and_texts(without_system)[0] == (common_pb2.ROLE_SYSTEM, "yield\nThe yield expression ...")


def test_passages_are_trimmed_to_the_budget_best_first_and_tool_results_kept_whole() -> None:
    passages = [PromptPassage(f"t{i}", "word " * 200) for i in range(5)]
    context = context_text(passages, tools_text(TOOLS, MAX_MESSAGE_CHARS), room=600)
    assert len(context) <= 600
    assert "t0" in context and "t4" not in context and context.endswith('returned: {"value": 2}')


def test_a_huge_tool_result_is_cut_to_one_message_and_says_so() -> None:
    huge = [PromptToolResult("fetch", "{}", "x" * 1_000_000)]  # a tool may return 1 MiB
    system = text(common_pb2.ROLE_SYSTEM, "Be brief.")
    messages, _ = conversation("q?", [system, text(common_pb2.ROLE_USER, "q?")], [], huge, 10**7)
    context = message_text(messages[0])
    assert len(context) <= MAX_MESSAGE_CHARS and context.startswith("Be brief.\n\nTool fetch({}) returned: xxx")
    assert context.endswith(CUT_MARK)


def test_the_context_never_outgrows_one_message() -> None:
    passages = [PromptPassage(f"t{i}", "word " * 20_000) for i in range(5)]
    messages, _ = conversation("q?", [text(common_pb2.ROLE_SYSTEM, "Be brief.")], passages, [], 10**7)
    assert len(message_text(messages[0])) <= MAX_MESSAGE_CHARS


def test_budget_leaves_room_for_the_answer() -> None:
    assert prompt_char_budget(512, 128) == (512 - 136) * 3
    assert prompt_char_budget(512, 4096) == (512 - 264) * 3
    assert prompt_char_budget(64, 64) >= 200


def test_blocks_are_kept_best_first_skipping_one_that_does_not_fit() -> None:
    assert fit_blocks([40, 70, 20, 30], [10, 10, 10, 10], tokens=100, chars=1000) == [0, 2, 3]
    assert fit_blocks([40, 70, 20], [10, 10, 10], tokens=39, chars=1000) == [2]
    assert fit_blocks([1, 1, 1], [500, 500, 10], tokens=100, chars=520) == [0, 2]  # a block counts its separator


def test_token_room_leaves_what_inference_reserves_for_the_answer() -> None:
    assert token_room(512, 16) == 496
    assert token_room(512, 4096) == 256  # inference reserves at most half the context
