"""The balancing policies as pure functions of the load views."""

from __future__ import annotations

import random

from gateway.balancing.choice import Chooser, LoadView, Policy


def test_the_score_is_work_per_slot_counting_own_calls_at_once() -> None:
    assert LoadView(in_flight=2, max_running=4).score() == 0.5
    # the report counted 6 (2 of them ours then); we now have 5 in flight: 4 others + 5 ours over 4 slots
    assert LoadView(in_flight=5, reported_work=6, in_flight_at_report=2, max_running=4).score() == 9 / 4
    assert LoadView(in_flight=0, reported_work=1, in_flight_at_report=3).score() == 0.0, "never negative"


def test_least_load_prefers_the_bigger_replica_at_equal_work() -> None:
    small = LoadView(in_flight=3, max_running=4)
    big = LoadView(in_flight=3, max_running=32)
    chooser = Chooser(Policy.LEAST_LOAD, random.Random(1))
    assert {chooser.pick([small, big]) for _ in range(20)} == {1}


def test_least_load_breaks_ties_at_random() -> None:
    chooser = Chooser(Policy.LEAST_LOAD, random.Random(7))
    picks = [chooser.pick([LoadView(1), LoadView(1), LoadView(5)]) for _ in range(60)]
    assert set(picks) == {0, 1}


def test_round_robin_cycles_whatever_the_load() -> None:
    chooser = Chooser(Policy.ROUND_ROBIN)
    assert [chooser.pick([LoadView(9), LoadView(0), LoadView(0)]) for _ in range(6)] == [0, 1, 2, 0, 1, 2]
