"""The prompt keeps the question and tool results whole and fits passages into the budget."""

from __future__ import annotations

from gateway.prompt import PromptPassage, PromptToolResult, build_prompt, prompt_char_budget


def test_prompt_layout() -> None:
    prompt = build_prompt(
        "What is yield?",
        [PromptPassage("yield", "The yield expression ..."), PromptPassage("return", "The return statement ...")],
        [PromptToolResult("calculator", '{"expression": "1+1"}', '{"value": 2}')],
        budget_chars=10_000,
    )
    assert prompt.index("The yield expression") < prompt.index("The return statement") < prompt.index("Tool ")
    assert prompt.endswith(
        'Tool calculator({"expression": "1+1"}) returned: {"value": 2}\nQuestion: What is yield?\nAnswer:'
    )


def test_passages_are_trimmed_to_the_budget_best_first() -> None:
    passages = [PromptPassage(f"t{i}", "word " * 200) for i in range(5)]
    prompt = build_prompt("q?", passages, [], budget_chars=600)
    assert len(prompt) <= 600
    assert "t0" in prompt and "t4" not in prompt
    assert prompt.endswith("Question: q?\nAnswer:")


def test_budget_leaves_room_for_the_answer() -> None:
    assert prompt_char_budget(512, 128) == (512 - 136) * 3
    assert prompt_char_budget(512, 4096) == (512 - 264) * 3
    assert prompt_char_budget(64, 64) >= 200
