"""Two gateways compared in one run: the same requests through each, trials interleaved A/B so that the machine's
drifts fall on both sides (bench/security.py: TLS and API keys; bench/observability.py: metrics and tracing)."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from bench import harness
from bench.gateway import QUESTION, StreamResult, _consume, _gateway_tokens, sampling
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc


def full_path_request(max_tokens: int) -> gateway_pb2.GatewayRequest:
    """The question with retrieval on (one passage of the demo collection, to keep the prompt short) and one forced
    calculator call: every hop is used."""
    request = gateway_pb2.GatewayRequest(question=QUESTION, sampling=sampling(max_tokens))
    request.retrieval.top_k = 1
    request.tool_calls.add(call_id="calc", name="calculator", arguments_json='{"expression": "2**16"}')
    return request


def relay_request(max_tokens: int) -> gateway_pb2.GatewayRequest:
    """The question alone, as bench/gateway.py relays it: the streaming hops (client, gateway, inference) only."""
    request = gateway_pb2.GatewayRequest(question=QUESTION, sampling=sampling(max_tokens))
    request.retrieval.disabled = True
    return request


@dataclass(frozen=True, slots=True)
class Ttft:
    """Two paths' median time to first token, and the median of the per-trial differences (each pair measured
    back to back, so the machine's slower drifts cancel out)."""

    first_ms: float
    second_ms: float
    overhead_ms: float


@dataclass(frozen=True, slots=True)
class Rates:
    """Tokens/s received through two paths, one figure per trial, trial ``i`` of each measured back to back."""

    first: list[float]
    second: list[float]
    tokens: dict[str, int]
    """Tokens received through each path over all its trials, by name."""

    @property
    def medians(self) -> tuple[float, float]:
        return statistics.median(self.first), statistics.median(self.second)

    @property
    def paired_ratio(self) -> float:
        """The median over trials of first / second (each pair measured back to back)."""
        return statistics.median(a / b for a, b in zip(self.first, self.second, strict=True))


class Gateways:
    """Generate streams through gateways by name, each sent the same request."""

    def __init__(self, channels: Mapping[str, grpc.aio.Channel]) -> None:
        self.stubs = {name: gateway_pb2_grpc.GatewayServiceStub(channel) for name, channel in channels.items()}

    async def run(
        self, name: str, request: gateway_pb2.GatewayRequest, concurrency: int
    ) -> tuple[float, list[StreamResult]]:
        """(elapsed seconds, per-stream results) of ``concurrency`` streams through ``name`` started together."""
        stub = self.stubs[name]
        start = time.perf_counter()
        streams = (_consume(stub.Generate(request, timeout=600), _gateway_tokens) for _ in range(concurrency))
        results = await asyncio.gather(*streams)
        return time.perf_counter() - start, list(results)

    async def warm(self) -> None:
        """Connections, TLS sessions, the tool-schema cache and the model's first step, on every path."""
        for name in self.stubs:
            await self.run(name, full_path_request(1), 2)

    async def ttft(self, first: str, second: str, samples: int, request: gateway_pb2.GatewayRequest) -> Ttft:
        """Time to first token of ``request``, one stream at a time through each, the two interleaved."""
        ttfts: dict[str, list[float]] = {first: [], second: []}
        for trial in range(samples):
            for name in harness.alternate(trial, first, second):
                _, (result,) = await self.run(name, request, 1)
                ttfts[name].append(result.ttft_s * 1000)
        paired = [a - b for a, b in zip(ttfts[first], ttfts[second], strict=True)]
        return Ttft(statistics.median(ttfts[first]), statistics.median(ttfts[second]), statistics.median(paired))

    async def tokens_per_s(
        self, first: str, second: str, request: gateway_pb2.GatewayRequest, trials: int, concurrency: int
    ) -> Rates:
        """Tokens/s received through each, ``concurrency`` streams of ``request`` at once, trials interleaved."""
        rates: dict[str, list[float]] = {first: [], second: []}
        tokens = dict.fromkeys(rates, 0)
        for trial in range(trials):
            for name in harness.alternate(trial, first, second):
                elapsed, results = await self.run(name, request, concurrency)
                received = sum(r.tokens for r in results)
                rates[name].append(received / elapsed)
                tokens[name] += received
        return Rates(rates[first], rates[second], tokens)
