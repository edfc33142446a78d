"""Which inference replica gets a Generate: the balancing policies, as pure functions of what replicas report.

``least-load`` (the default) sends each call to the replica with the lowest load score, ties broken at
random. The score is the work a replica holds per slot it can run at once:

    score = (this gateway's calls in flight there + others' work there) / max_running

"Others' work" is what the replica's last load report counted (running + waiting) minus this gateway's own
calls at the time of that report, so reports that lag a second behind do not hide the calls just sent. With
no report yet the score falls back to calls in flight (Envoy's least outstanding requests). Dividing by
``max_running`` is what makes heterogeneous replicas (a small GPU beside a big one, a replica slowed by
something else on its host) get work in proportion to what they can do.

Why the least score and not Envoy's power of two choices (pick two at random, keep the less loaded): two
random choices exist to stop many balancers with stale views from herding onto one host. Here the view is
fresh: this gateway's own calls count the moment they are sent, and replicas push a report within 50 ms of a
change, so the least-loaded replica is known, and P2C would send a third of the calls to a full replica
whenever two of three are full. Several gateways can still herd within one report's delay; random tie-breaks
spread equal replicas. SGLang's router makes the same choice (shortest queue once loads are imbalanced) under
its prefix-cache affinity; vLLM's production-stack router offers round-robin, session affinity and a
lowest-QPS rule. genmesh has no prefix cache shared across replicas yet, so load alone decides.

``round-robin`` ignores load (the baseline that bench/scale.py measures the default against).
"""

from __future__ import annotations

import enum
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass


class Policy(enum.StrEnum):
    """How a replica is picked among the eligible ones."""

    LEAST_LOAD = "least-load"
    ROUND_ROBIN = "round-robin"


@dataclass(frozen=True, slots=True)
class LoadView:
    """What the gateway knows of one replica's load."""

    in_flight: int
    """Generate calls this gateway has open on the replica now."""
    reported_work: int = 0
    """running + waiting in the replica's last report (0 without one)."""
    in_flight_at_report: int = 0
    """This gateway's calls in flight when that report arrived."""
    max_running: int = 1

    def score(self) -> float:
        """Work held per slot; lower is better."""
        others = max(0, self.reported_work - self.in_flight_at_report)
        return (self.in_flight + others) / max(1, self.max_running)


class Chooser:
    """Picks one of the eligible replicas by the policy; keeps the round-robin position between calls."""

    def __init__(self, policy: Policy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng or random.Random()
        self._turn = itertools.count()

    def pick(self, loads: Sequence[LoadView], turn: bool = True) -> int:
        """The index in ``loads`` (non-empty) of the replica to use. ``turn`` False: a side call (CountTokens,
        GetModelInfo) that takes no round-robin turn, lest it shift which replica the next Generate gets; it
        goes to the least loaded replica whatever the policy."""
        if self.policy is Policy.ROUND_ROBIN and turn:
            return next(self._turn) % len(loads)
        scores = [load.score() for load in loads]
        lowest = min(scores)
        return self._rng.choice([i for i, score in enumerate(scores) if score == lowest])
