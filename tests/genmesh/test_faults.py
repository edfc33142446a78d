"""Fault-injection specs parse strictly and apply to the methods and share of calls they name."""

from __future__ import annotations

import grpc
import pytest

from genmesh.faults import FaultDecision, FaultInjector, FaultRule, parse_faults


def test_parses_delays_aborts_and_percentages() -> None:
    rules = parse_faults("Query:delay=200ms; /genmesh.v1.ToolsService/Invoke:abort=unavailable,percent=30;X:delay=1.5s")
    assert rules == [
        FaultRule("Query", delay_s=0.2),
        FaultRule("/genmesh.v1.ToolsService/Invoke", abort=grpc.StatusCode.UNAVAILABLE, percent=30.0),
        FaultRule("X", delay_s=1.5),
    ]


@pytest.mark.parametrize(
    "spec",
    [
        "Query",
        ":delay=1ms",
        "Query:delay=-1ms",
        "Query:abort=NOPE",
        "Query:abort=OK",
        "Query:percent=101",
        "Q:jitter=1",
    ],
)
def test_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_faults(spec)


def test_matches_short_and_full_method_names() -> None:
    injector = FaultInjector(parse_faults("Query:delay=10ms;/genmesh.v1.ToolsService/Invoke:abort=ABORTED"))
    assert injector.decide("/genmesh.v1.RetrievalService/Query") == FaultDecision(delay_s=0.01, abort=None)
    assert injector.decide("/genmesh.v1.ToolsService/Invoke") == FaultDecision(0.0, grpc.StatusCode.ABORTED)
    assert injector.decide("/genmesh.v1.RetrievalService/GetStats") is None
    assert injector.decide("/genmesh.v1.OtherService/Invoke") is None


def test_percentage_applies_to_about_that_share_of_calls() -> None:
    injector = FaultInjector(parse_faults("Query:abort=UNAVAILABLE,percent=30"), seed=1)
    hits = sum(injector.decide("/s/Query") is not None for _ in range(10_000))
    assert 2_700 < hits < 3_300


def test_empty_spec_injects_nothing() -> None:
    injector = FaultInjector(parse_faults(""))
    assert not injector
    assert injector.decide("/s/Query") is None
