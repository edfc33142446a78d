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
    assert StageBudgets() == StageBudgets(3.0, 10.0)
    with pytest.raises(ValueError, match="retrieval budget"):
        StageBudgets(0.0, 1.0)
    with pytest.raises(ValueError, match="tools budget"):
        StageBudgets(1.0, 601.0)
