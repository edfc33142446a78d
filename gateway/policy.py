"""The gateway's resilience settings (stage budgets, retries, circuit breakers, admission) and their flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from gateway.circuit import CircuitConfig
from gateway.deadlines import StageBudgets
from genmesh.config import Flags

GENERATE_ATTEMPTS = 3
"""Most attempts of a Generate call that failed with UNAVAILABLE before its first message."""
CONNECT_WAIT_S = 1.0
"""How long a Generate attempt waits for the inference channel to (re)connect, inside the deadline: as long as
the channel's longest reconnect back-off (genmesh.channels), so that a restarted service is found."""
TOOL_ATTEMPTS = 3
"""Most InvokeMany attempts of an idempotent tool call that failed with UNAVAILABLE."""
DEFAULT_MAX_STREAMS = 256
"""Concurrent Generate streams the gateway admits."""


@dataclass(frozen=True, slots=True)
class ResiliencePolicy:
    """Everything the gateway does about slow, failing or overloaded upstreams and clients."""

    budgets: StageBudgets = field(default_factory=StageBudgets)
    circuit: CircuitConfig = field(default_factory=CircuitConfig)
    generate_attempts: int = GENERATE_ATTEMPTS
    connect_wait_s: float = CONNECT_WAIT_S
    tool_attempts: int = TOOL_ATTEMPTS
    max_streams: int = DEFAULT_MAX_STREAMS


def add_resilience_flags(flags: Flags) -> None:
    """The gateway's flags (and GENMESH_GATEWAY_* variables) for a ResiliencePolicy."""
    budgets, circuit = StageBudgets(), CircuitConfig()
    flags.add(
        "--retrieval-budget-ms",
        type=int,
        default=int(budgets.retrieval_s * 1000),
        help="budget of the retrieval stage inside the request's deadline; past it the stage is degraded",
    )
    flags.add(
        "--tools-budget-ms",
        type=int,
        default=int(budgets.tools_s * 1000),
        help="budget of the tool calls inside the request's deadline; calls past it report DEADLINE_EXCEEDED",
    )
    flags.add(
        "--stage-deadline-share",
        type=float,
        default=budgets.deadline_share,
        help="most of a client deadline (of what is left when the request starts) retrieval and the tool calls "
        "may take, in (0, 1]; the rest is kept for inference",
    )
    flags.add(
        "--generate-attempts",
        type=int,
        default=GENERATE_ATTEMPTS,
        help="attempts of a Generate call that fails with UNAVAILABLE before its first token",
    )
    flags.add(
        "--connect-wait",
        type=float,
        default=CONNECT_WAIT_S,
        help="seconds a Generate call waits for the inference channel to reconnect (inside the deadline)",
    )
    flags.add("--circuit-failures", type=int, default=circuit.failures, help="consecutive failures that open a circuit")
    flags.add("--circuit-cooldown", type=float, default=circuit.cooldown_s, help="seconds an open circuit fails fast")
    flags.add(
        "--max-streams",
        type=int,
        default=DEFAULT_MAX_STREAMS,
        help="concurrent Generate streams; past it RESOURCE_EXHAUSTED with RetryInfo",
    )


def policy_from_args(args: argparse.Namespace) -> ResiliencePolicy:
    """The policy the flags describe; raises ValueError naming a bad value."""
    if args.generate_attempts < 1:
        raise ValueError(f"--generate-attempts must be at least 1, got {args.generate_attempts}")
    if args.max_streams < 1:
        raise ValueError(f"--max-streams must be at least 1, got {args.max_streams}")
    if args.connect_wait < 0:
        raise ValueError(f"--connect-wait must not be negative, got {args.connect_wait}")
    return ResiliencePolicy(
        budgets=StageBudgets(
            args.retrieval_budget_ms / 1000.0, args.tools_budget_ms / 1000.0, args.stage_deadline_share
        ),
        circuit=CircuitConfig(args.circuit_failures, args.circuit_cooldown),
        generate_attempts=args.generate_attempts,
        connect_wait_s=args.connect_wait,
        max_streams=args.max_streams,
    )
