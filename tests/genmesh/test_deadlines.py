"""Deadline arithmetic: what a downstream call and a stage get of the client's time."""

from __future__ import annotations

import math
import time

import pytest

from gateway.deadlines import StageBudgets, budget_timeout
from genmesh.deadlines import DEADLINE_MARGIN_S, deadline_after, left_s, timeout


def test_no_deadline_means_no_timeout_and_endless_time() -> None:
    assert deadline_after(None) is None
    assert timeout(None) is None
    assert math.isinf(left_s(None))
    assert budget_timeout(None, 3.0) == 3.0


def test_a_downstream_call_gets_what_is_left_less_the_margin() -> None:
    deadline = deadline_after(2.0)
    assert deadline is not None
    left = timeout(deadline)
    assert left is not None
    assert 2.0 - DEADLINE_MARGIN_S - 0.05 < left <= 2.0 - DEADLINE_MARGIN_S
    assert 1.9 < left_s(deadline) <= 2.0


def test_a_spent_deadline_still_gives_a_positive_timeout() -> None:
    assert timeout(time.monotonic() - 5) == pytest.approx(0.001)
    assert left_s(time.monotonic() - 5) < 0


def test_a_stage_gets_its_budget_cut_short_by_the_deadline() -> None:
    assert budget_timeout(time.monotonic() + 60, 3.0) == 3.0
    assert budget_timeout(time.monotonic() + 1.0, 3.0) == pytest.approx(1.0 - DEADLINE_MARGIN_S, abs=0.05)


def test_budgets_are_checked_and_the_defaults_are_the_documented_ones() -> None:
    assert StageBudgets() == StageBudgets(3.0, 10.0, 0.5)
    with pytest.raises(ValueError, match="retrieval budget"):
        StageBudgets(0.0, 1.0)
    with pytest.raises(ValueError, match="tools budget"):
        StageBudgets(1.0, 601.0)
    for share in (0.0, -0.5, 1.01):
        with pytest.raises(ValueError, match="stage deadline share"):
            StageBudgets(deadline_share=share)


def test_the_stages_get_a_share_of_the_client_deadline_and_inference_keeps_the_rest() -> None:
    now = 1000.0
    assert StageBudgets().stage_deadline(None, now) is None, "without a client deadline the budgets alone apply"
    assert StageBudgets().stage_deadline(now + 2.0, now) == now + 1.0
    assert StageBudgets(deadline_share=0.25).stage_deadline(now + 2.0, now) == now + 0.5
    assert StageBudgets(deadline_share=1.0).stage_deadline(now + 2.0, now) == now + 2.0
    assert StageBudgets().stage_deadline(now - 1.0, now) == now, "a spent deadline leaves the stages nothing"


def test_a_stage_budget_is_cut_to_the_share_of_a_short_deadline_but_not_of_a_long_one() -> None:
    budgets = StageBudgets()  # retrieval 3 s, half the deadline
    start = time.monotonic()
    short = budgets.stage_deadline(start + 2.0, start)  # a 2 s client deadline: retrieval gets 1 s, not 3 s
    assert budget_timeout(short, budgets.retrieval_s) == pytest.approx(1.0 - DEADLINE_MARGIN_S, abs=0.05)
    long = budgets.stage_deadline(start + 60.0, start)  # 30 s of share: the 3 s budget binds
    assert budget_timeout(long, budgets.retrieval_s) == 3.0
