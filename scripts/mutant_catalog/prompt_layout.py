"""Mutants of the prompt layout that keeps the stable parts first, for prefix-cache hits."""

from __future__ import annotations

from mutant_catalog.mutant import Mutant

MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "context-after-the-question",
        "gateway/prompt.py",
        "return [_text(common_pb2.ROLE_SYSTEM, context), *turns], True",
        "return [*turns, _text(common_pb2.ROLE_SYSTEM, context)], True",
        (
            "tests/gateway/test_prompt_prefix_sharing.py"
            "::test_two_questions_over_the_same_sources_share_every_token_before_the_question[question-only]",
        ),
    ),
    Mutant(
        "tool-results-in-finishing-order",
        "gateway/stages/inference.py",
        "results = sorted(gathered.tool_results, key=lambda r: order[r.call_id])",
        "results = gathered.tool_results",
        (
            "tests/gateway/test_prompt_tool_order.py"
            "::test_tool_results_are_laid_out_in_the_calls_order_whichever_finishes_first",
        ),
    ),
)
