"""The load bench/scale.py puts on a gateway: streams counted token by token, closed-loop batches (a fixed set
of requests, a fixed number in flight) and open-loop Poisson arrivals (sent on schedule whatever the answers)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from bench import harness
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc

QUESTIONS = (
    "What does the with statement do?",
    "How does a generator differ from a list comprehension?",
    "What happens when a class defines __enter__ and __exit__?",
    "Explain how the garbage collector finds reference cycles.",
    "What is the difference between a module and a package?",
    "How are default argument values evaluated?",
    "What does the global statement do inside a function?",
    "How does Python resolve a name in nested scopes?",
)
DEADLINE_S = 120.0


def ask(i: int, max_tokens: int, tag: str) -> gateway_pb2.GatewayRequest:
    """Request ``i`` of a workload: one of eight questions, greedy, no retrieval (the work is inference's)."""
    request = gateway_pb2.GatewayRequest(request_id=f"scale-{tag}-{i}", question=QUESTIONS[i % len(QUESTIONS)])
    request.sampling.max_tokens = max_tokens
    request.sampling.temperature = 0.0
    request.retrieval.disabled = True
    return request


@dataclass(slots=True)
class Outcome:
    """How one stream went; times are time.perf_counter() values."""

    due: float
    """When the request was due to be sent (open loop: its scheduled arrival, so a late client counts)."""
    status: str = "NO_COMPLETION"
    tokens: int = 0
    first_token: float | None = None
    ended: float = 0.0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_token is None else (self.first_token - self.due) * 1000.0


async def stream(stub: gateway_pb2_grpc.GatewayServiceStub, request: gateway_pb2.GatewayRequest, due: float) -> Outcome:
    """Send ``request`` and read its answer to the end; a stream still open at twice its deadline is a HANG."""
    outcome = Outcome(due)
    try:
        async with asyncio.timeout(2 * DEADLINE_S):
            async for event in stub.Generate(request, timeout=DEADLINE_S):
                if event.HasField("delta"):
                    if outcome.first_token is None:
                        outcome.first_token = time.perf_counter()
                    outcome.tokens += len(event.delta.token_ids)
                elif event.HasField("complete"):
                    outcome.status = "OK"
    except grpc.aio.AioRpcError as error:
        outcome.status = error.code().name
        outcome.detail = error.details() or ""
    except TimeoutError:
        outcome.status = "HANG"
    outcome.ended = time.perf_counter()
    return outcome


async def closed_loop(
    stub: gateway_pb2_grpc.GatewayServiceStub, requests: Sequence[gateway_pb2.GatewayRequest], in_flight: int
) -> tuple[float, list[Outcome]]:
    """(elapsed seconds, outcomes) of ``requests``, ``in_flight`` of them open at a time."""
    pending = iter(requests)
    outcomes: list[Outcome] = []

    async def worker() -> None:
        for request in pending:
            outcomes.append(await stream(stub, request, time.perf_counter()))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - start, outcomes


def arrivals(count: int, rate_per_s: float, seed: int) -> list[float]:
    """Offsets in seconds of ``count`` Poisson arrivals at ``rate_per_s`` (the same ones for the same seed)."""
    rng = random.Random(seed)
    offsets, at = [], 0.0
    for _ in range(count):
        at += rng.expovariate(rate_per_s)
        offsets.append(at)
    return offsets


async def open_loop(
    stub: gateway_pb2_grpc.GatewayServiceStub, requests: Sequence[gateway_pb2.GatewayRequest], offsets: Sequence[float]
) -> list[Outcome]:
    """Send request ``i`` at ``offsets[i]`` seconds from now, whether or not earlier ones were answered."""
    start = time.perf_counter()
    streams = []
    for request, offset in zip(requests, offsets, strict=True):
        await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
        streams.append(asyncio.create_task(stream(stub, request, start + offset)))
    return list(await asyncio.gather(*streams))


def ttft_ms(outcomes: Sequence[Outcome], q: float) -> float:
    """The ``q`` quantile of time to first token over the streams that got one (0 when none did)."""
    values = [t for o in outcomes if (t := o.ttft_ms) is not None]
    return round(harness.percentile(values, q), 1) if values else 0.0


def tally(outcomes: Sequence[Outcome]) -> str:
    """``38 OK, 2 UNAVAILABLE``."""
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items(), key=lambda kv: -kv[1]))
