"""Gateway benchmark: relay throughput and time-to-first-token against calling inference directly, and fan-out.

Starts two meshes on free loopback ports, measures, stops them. Every figure is a ratio or a
difference against a baseline measured in the same run, because machines here are noisy:

- relay_ratio_cN: tokens/s received through the gateway over tokens/s received from inference
  directly, same prompt, greedy, N concurrent streams (trials interleaved A/B);
- ttft_overhead_ms: median time to first token through the gateway minus directly (1 stream);
- fanout_ratio: the gateway's pre-inference time over its slowest stage, with retrieval and the
  two tool calls' InvokeMany stream each delayed 200 ms by fault injection (1.0 would be perfect
  overlap, 3.0 serial).

    python -m bench.gateway --quick     # about a minute, as CI runs it
    python -m bench.gateway             # the figures of docs/BENCHMARKS.md

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

from bench import harness
from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh
from genmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, inference_pb2, inference_pb2_grpc

QUESTION = "What happens when a class defines __enter__ and __exit__?"
STAGE_DELAY_MS = 200


@dataclass(frozen=True, slots=True)
class Settings:
    max_tokens: int
    trials: int
    concurrency: tuple[int, ...]
    ttft_samples: int
    fanout_trials: int


QUICK = Settings(max_tokens=32, trials=3, concurrency=(1, 32), ttft_samples=40, fanout_trials=5)
FULL = Settings(max_tokens=128, trials=5, concurrency=(1, 32), ttft_samples=200, fanout_trials=20)


@dataclass(frozen=True, slots=True)
class StreamResult:
    tokens: int
    ttft_s: float


def sampling(max_tokens: int) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0)


async def _consume(stream: AsyncIterator[object], is_delta: Callable[[object], int]) -> StreamResult:
    start = time.perf_counter()
    ttft = 0.0
    tokens = 0
    async for message in stream:
        n = is_delta(message)
        if n and not ttft:
            ttft = time.perf_counter() - start
        tokens += n
    return StreamResult(tokens, ttft)


def _gateway_tokens(message: object) -> int:
    assert isinstance(message, gateway_pb2.GatewayEvent)
    return len(message.delta.token_ids) if message.HasField("delta") else 0


def _inference_tokens(message: object) -> int:
    assert isinstance(message, inference_pb2.GenerateResponse)
    return len(message.delta.token_ids) if message.HasField("delta") else 0


class Clients:
    """Stubs for both paths, with requests that give the model the very same prompt."""

    def __init__(self, gateway: grpc.aio.Channel, inference: grpc.aio.Channel, max_tokens: int) -> None:
        self.gateway = gateway_pb2_grpc.GatewayServiceStub(gateway)
        self.inference = inference_pb2_grpc.InferenceServiceStub(inference)
        self.via_gateway = gateway_pb2.GatewayRequest(question=QUESTION, sampling=sampling(max_tokens))
        self.via_gateway.retrieval.disabled = True
        self.direct = inference_pb2.GenerateRequest(
            prompt=f"Question: {QUESTION}\nAnswer:", sampling=sampling(max_tokens)
        )

    async def run(self, path: str, concurrency: int) -> tuple[float, list[StreamResult]]:
        """(elapsed seconds, per-stream results) of ``concurrency`` streams started together."""

        def one() -> AsyncIterator[object]:
            stream: AsyncIterator[object]
            if path == "gateway":
                stream = self.gateway.Generate(self.via_gateway, timeout=600)
            else:
                stream = self.inference.Generate(self.direct, timeout=600)
            return stream

        counter = _gateway_tokens if path == "gateway" else _inference_tokens
        start = time.perf_counter()
        results = await asyncio.gather(*(_consume(one(), counter) for _ in range(concurrency)))
        return time.perf_counter() - start, list(results)


async def measure_relay(mesh: Mesh, settings: Settings) -> dict[str, float]:
    figures: dict[str, float] = {}
    async with open_channel(mesh.address("gateway")) as gw, open_channel(mesh.address("inference")) as inf:
        clients = Clients(gw, inf, settings.max_tokens)
        await clients.run("gateway", 2)  # warm both paths: channels, caches, the model's first step
        await clients.run("direct", 2)
        for concurrency in settings.concurrency:
            rates: dict[str, list[float]] = {"gateway": [], "direct": []}
            for trial in range(settings.trials):
                for path in harness.alternate(trial, "gateway", "direct"):
                    elapsed, results = await clients.run(path, concurrency)
                    rates[path].append(sum(r.tokens for r in results) / elapsed)
            gateway_rate = statistics.median(rates["gateway"])
            direct_rate = statistics.median(rates["direct"])
            figures[f"tokens_per_s_gateway_c{concurrency}"] = round(gateway_rate, 1)
            figures[f"tokens_per_s_direct_c{concurrency}"] = round(direct_rate, 1)
            figures[f"relay_ratio_c{concurrency}"] = round(gateway_rate / direct_rate, 3)
            print(
                f"c={concurrency:<3} gateway {gateway_rate:8.1f} tok/s   direct {direct_rate:8.1f} tok/s"
                f"   ratio {gateway_rate / direct_rate:.3f}",
                flush=True,
            )
        figures.update(await _measure_ttft(Clients(gw, inf, 1), settings.ttft_samples))
    return figures


async def _measure_ttft(clients: Clients, samples: int) -> dict[str, float]:
    """Median time to first token of one stream at a time, the two paths interleaved."""
    ttfts: dict[str, list[float]] = {"gateway": [], "direct": []}
    for trial in range(samples):
        for path in harness.alternate(trial, "gateway", "direct"):
            _, (result,) = await clients.run(path, 1)
            ttfts[path].append(result.ttft_s * 1000)
    gateway, direct = statistics.median(ttfts["gateway"]), statistics.median(ttfts["direct"])
    print(f"ttft: gateway {gateway:.2f} ms   direct {direct:.2f} ms   overhead {gateway - direct:.2f} ms", flush=True)
    return {
        "ttft_gateway_ms": round(gateway, 2),
        "ttft_direct_ms": round(direct, 2),
        "ttft_overhead_ms": round(gateway - direct, 2),
    }


async def measure_fanout(mesh: Mesh, settings: Settings) -> dict[str, float]:
    request = gateway_pb2.GatewayRequest(question=QUESTION, sampling=sampling(1))
    request.tool_calls.add(call_id="calc", name="calculator", arguments_json='{"expression": "2**16"}')
    request.tool_calls.add(call_id="time", name="clock", arguments_json='{"timezone": "UTC"}')
    ratios = []
    async with open_channel(mesh.address("gateway")) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        for _ in range(settings.fanout_trials + 1):
            timings = None
            async for event in stub.Generate(request, timeout=60):
                if event.HasField("complete"):
                    timings = event.complete.timings
            assert timings is not None
            slowest = max(s.end_ms - s.start_ms for s in timings.stages if s.stage != "inference")
            ratios.append(timings.pre_inference_ms / slowest)
    ratios = ratios[1:]  # the first request also fills the gateway's tool-schema cache
    ratio = statistics.median(ratios)
    print(f"fan-out: pre-inference / slowest stage = {ratio:.3f} (median of {len(ratios)})", flush=True)
    return {"fanout_ratio": round(ratio, 3), "fanout_ratio_max": round(max(ratios), 3)}


async def main_async(settings: Settings, _: argparse.Namespace) -> harness.Figures:
    with harness.scratch() as logs:
        inference_args = ["--threads", "1"]
        async with harness.running_mesh(logs / "relay", {"inference": inference_args}) as mesh:
            relay = await measure_relay(mesh, settings)
        faults = {
            "retrieval": ["--faults", f"Query:delay={STAGE_DELAY_MS}ms"],
            "tools": ["--faults", f"InvokeMany:delay={STAGE_DELAY_MS}ms"],
            "inference": inference_args,
        }
        async with harness.running_mesh(logs / "fanout", faults) as mesh:
            fanout = await measure_fanout(mesh, settings)
    return {"max_tokens": settings.max_tokens, **relay, **fanout}


if __name__ == "__main__":
    harness.main("gateway", __doc__, main_async, QUICK, FULL)
