"""Stream interval benchmark: what holding token chunks (``genmesh serve inference --stream-interval-tokens``) does
to the gateway's relay ratio at 32 concurrent streams.

Starts the mesh twice on free loopback ports, inference without and with the interval, and measures each as
bench.gateway measures its relay (tokens/s through the gateway over tokens/s from inference directly, same
prompt, greedy, trials interleaved A/B), and the gRPC messages a stream takes through the gateway:

- stream_interval_relay_ratio_off / _on: the relay ratio at 32 streams without / with the interval;
- messages_per_stream_off / _on: the gateway's median messages per stream (deltas and the completion);
- tokens_per_s_gateway_off / _on: the gateway path's tokens/s (the two meshes run one after the other, so
  this pair is noisier than the ratios).

    python -m bench.stream_interval --quick     # about a minute
    python -m bench.stream_interval --stream-interval-tokens 8

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bench import harness
from bench.gateway import Clients
from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh

CONCURRENCY = 32


@dataclass(frozen=True, slots=True)
class Settings:
    max_tokens: int
    trials: int


QUICK = Settings(max_tokens=32, trials=2)
FULL = Settings(max_tokens=128, trials=5)


async def _messages_per_stream(clients: Clients) -> float:
    """Median GatewayEvents per stream of CONCURRENCY streams started together."""

    async def one() -> int:
        return sum([1 async for _ in clients.gateway.Generate(clients.via_gateway, timeout=600)])

    counts = await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
    return float(statistics.median(counts))


async def _measure(mesh: Mesh, settings: Settings) -> dict[str, float]:
    async with open_channel(mesh.address("gateway")) as gw, open_channel(mesh.address("inference")) as inf:
        clients = Clients(gw, inf, settings.max_tokens)
        await clients.run("gateway", 2)  # warm both paths
        await clients.run("direct", 2)
        rates: dict[str, list[float]] = {"gateway": [], "direct": []}
        for trial in range(settings.trials):
            for path in harness.alternate(trial, "gateway", "direct"):
                elapsed, results = await clients.run(path, CONCURRENCY)
                rates[path].append(sum(r.tokens for r in results) / elapsed)
        gateway, direct = statistics.median(rates["gateway"]), statistics.median(rates["direct"])
        return {
            "ratio": gateway / direct,
            "gateway": gateway,
            "messages": await _messages_per_stream(clients),
        }


async def main_async(settings: Settings, args: argparse.Namespace) -> harness.Figures:
    figures: harness.Figures = {"max_tokens": settings.max_tokens, "stream_interval_tokens": args.interval_tokens}
    runs = {"off": [], "on": ["--stream-interval-tokens", str(args.interval_tokens)]}
    with harness.scratch() as logs:
        for name, extra in runs.items():
            start = time.perf_counter()
            async with harness.running_mesh(Path(logs) / name, {"inference": ["--threads", "1", *extra]}) as mesh:
                measured = await _measure(mesh, settings)
            print(
                f"{name:<3} relay ratio c{CONCURRENCY} {measured['ratio']:.3f}   gateway {measured['gateway']:8.1f} "
                f"tok/s   {measured['messages']:.0f} messages/stream   ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
            figures[f"stream_interval_relay_ratio_{name}"] = round(measured["ratio"], 3)
            figures[f"tokens_per_s_gateway_{name}"] = round(measured["gateway"], 1)
            figures[f"messages_per_stream_{name}"] = measured["messages"]
    return figures


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stream-interval-tokens", dest="interval_tokens", type=int, default=8, help="the interval measured (8)"
    )


if __name__ == "__main__":
    harness.main("stream_interval", __doc__, main_async, QUICK, FULL, _options)
