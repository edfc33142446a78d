"""Fault injection: per-method added delay and aborts, off unless configured (for tests, benchmarks, chaos drills).

A spec is a ``;``-separated list of rules ``METHOD:key=value[,key=value]``, where METHOD is a
method name (``Query``) or a full one (``/genmesh.v1.RetrievalService/Query``) and the keys are

- ``delay``: added latency before the handler runs (``200ms``, ``0.5s``);
- ``abort``: a status code name to fail with instead (``UNAVAILABLE``);
- ``percent``: share of matching calls affected, 0..100 (default 100).

Configured per service by its ``--faults`` flag or ``GENMESH_<SERVICE>_FAULTS`` (e.g. ``GENMESH_RETRIEVAL_FAULTS``);
example: ``--faults "Query:delay=200ms;Invoke:abort=UNAVAILABLE,percent=30"``. See docs/RESILIENCE.md.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc


@dataclass(frozen=True, slots=True)
class FaultRule:
    """What to do to the calls of one method."""

    method: str
    delay_s: float = 0.0
    abort: grpc.StatusCode | None = None
    percent: float = 100.0

    def matches(self, full_method: str) -> bool:
        """Whether this rule applies to ``/package.Service/Method``."""
        return full_method == self.method or full_method.rsplit("/", 1)[-1] == self.method


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """The fault to apply to one call."""

    delay_s: float
    abort: grpc.StatusCode | None


def _duration_s(text: str) -> float:
    text = text.strip()
    if text.endswith("ms"):
        value = float(text[:-2]) / 1000.0
    elif text.endswith("s"):
        value = float(text[:-1])
    else:
        value = float(text) / 1000.0
    if not 0 <= value <= 3600:
        raise ValueError(f"delay {text!r} must be between 0 and 1 hour")
    return value


def parse_faults(spec: str) -> list[FaultRule]:
    """Parse a fault spec; raises ValueError naming the bad part."""
    rules = []
    for raw in filter(None, (part.strip() for part in spec.split(";"))):
        method, sep, options = raw.partition(":")
        if not sep or not method:
            raise ValueError(f"fault rule {raw!r} must look like METHOD:key=value")
        delay_s, abort, percent = 0.0, None, 100.0
        for option in filter(None, (o.strip() for o in options.split(","))):
            key, _, value = option.partition("=")
            if key == "delay":
                delay_s = _duration_s(value)
            elif key == "abort":
                try:
                    abort = grpc.StatusCode[value.strip().upper()]
                except KeyError:
                    raise ValueError(f"unknown status code {value!r} in fault rule {raw!r}") from None
                if abort == grpc.StatusCode.OK:
                    raise ValueError(f"fault rule {raw!r} cannot abort with OK")
            elif key == "percent":
                percent = float(value)
                if not 0 <= percent <= 100:
                    raise ValueError(f"percent in {raw!r} must be 0..100")
            else:
                raise ValueError(f"unknown key {key!r} in fault rule {raw!r} (delay, abort, percent)")
        rules.append(FaultRule(method.strip(), delay_s, abort, percent))
    return rules


class FaultInjector:
    """Decides, per call, which configured fault applies."""

    def __init__(self, rules: list[FaultRule], seed: int | None = None) -> None:
        self._rules = rules
        self._random = random.Random(seed)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def decide(self, full_method: str) -> FaultDecision | None:
        """The fault for this call, or None to let it run untouched."""
        for rule in self._rules:
            if rule.matches(full_method) and self._random.uniform(0, 100) < rule.percent:
                return FaultDecision(rule.delay_s, rule.abort)
        return None
