"""The gateway's resilience flags: defaults, environment fallbacks, and refusals of bad values."""

from __future__ import annotations

import argparse

import pytest

from gateway.policy import ResiliencePolicy, add_resilience_flags, policy_from_args
from genmesh.config import Flags


def _parse(argv: list[str]) -> ResiliencePolicy:
    parser = argparse.ArgumentParser()
    add_resilience_flags(Flags(parser, "GENMESH_GATEWAY"))
    return policy_from_args(parser.parse_args(argv))


def test_defaults_are_the_documented_ones() -> None:
    policy = _parse([])
    assert policy == ResiliencePolicy()
    assert (policy.budgets.retrieval_s, policy.budgets.tools_s, policy.budgets.deadline_share) == (3.0, 10.0, 0.5)
    assert (policy.circuit.failures, policy.circuit.cooldown_s) == (5, 2.0)
    assert (policy.generate_attempts, policy.connect_wait_s, policy.tool_attempts) == (3, 1.0, 3)
    assert policy.max_streams == 256


def test_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENMESH_GATEWAY_MAX_STREAMS", "12")
    monkeypatch.setenv("GENMESH_GATEWAY_STAGE_DEADLINE_SHARE", "0.3")
    policy = _parse(["--retrieval-budget-ms", "250", "--circuit-cooldown", "0.5", "--generate-attempts", "1"])
    assert policy.max_streams == 12
    assert policy.budgets.retrieval_s == 0.25
    assert policy.budgets.deadline_share == 0.3
    assert _parse(["--stage-deadline-share", "0.8"]).budgets.deadline_share == 0.8, "the flag wins"
    assert policy.circuit.cooldown_s == 0.5
    assert policy.generate_attempts == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-streams", "0"], "max-streams"),
        (["--generate-attempts", "0"], "generate-attempts"),
        (["--connect-wait", "-1"], "connect-wait"),
        (["--tools-budget-ms", "0"], "tools budget"),
        (["--circuit-failures", "0"], "circuit failures"),
        (["--stage-deadline-share", "0"], "stage deadline share"),
        (["--stage-deadline-share", "1.5"], "stage deadline share"),
    ],
)
def test_bad_values_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _parse(argv)
