"""Tools benchmark: InvokeMany's fan-out against one call, and calculator calls per second.

Starts a tools service on a free loopback port (with bench/sleep_plugin.py's 200 ms ``sleep_ms`` tool),
measures, stops it. Every figure is measured against a baseline of the same run:

- fanout_ratio_50: wall time of one InvokeMany of 50 calls of the 200 ms tool (sent to last result
  received) over the wall time of one Invoke of the same tool; 1.0 is perfect overlap, 50 would be serial
  (median of the trials, the two interleaved);
- calculator_calls_per_s: unary Invoke calls/s of the calculator with 32 calls in flight at a time, next
  to the same at 1 in flight (calculator_calls_per_s_c1) and the same calls batched 32 per InvokeMany
  stream (calculator_calls_per_s_invoke_many).

    python -m bench.tools --quick     # about a minute, as CI runs it
    python -m bench.tools             # the figures of docs/BENCHMARKS.md

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bench import harness
from genmesh import mesh
from genmesh.channels import open_channel
from genmesh.cli.launcher import free_ports
from genmesh.v1 import common_pb2, tools_pb2, tools_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
SLEEP_MS = 200
FANOUT = 50
CONCURRENCY = 32
EXPRESSIONS = ("(2 + 3) * 4 ** 2", "2 ** 64 // 3", "1.5e3 / 7 - 0.25", "(((1 + 2) * 3) - 4) % 5")


@dataclass(frozen=True, slots=True)
class Settings:
    fanout_trials: int
    calculator_seconds: float


QUICK = Settings(fanout_trials=10, calculator_seconds=5.0)
FULL = Settings(fanout_trials=40, calculator_seconds=20.0)


def _call(call_id: str, name: str, arguments: dict[str, object]) -> common_pb2.ToolCall:
    return common_pb2.ToolCall(call_id=call_id, name=name, arguments_json=json.dumps(arguments))


async def measure_fanout(stub: tools_pb2_grpc.ToolsServiceStub, trials: int) -> dict[str, float]:
    """Median wall time of InvokeMany(50 x 200 ms) over that of one Invoke(200 ms), trials interleaved."""
    many = tools_pb2.InvokeManyRequest(calls=[_call(str(i), "sleep_ms", {"ms": SLEEP_MS}) for i in range(FANOUT)])
    one = tools_pb2.InvokeRequest(call=_call("0", "sleep_ms", {"ms": SLEEP_MS}))
    singles: list[float] = []
    fanouts: list[float] = []
    overlapped = 0
    for trial in range(trials + 1):
        start = time.perf_counter()
        await stub.Invoke(one, timeout=30)
        single = time.perf_counter() - start
        start = time.perf_counter()
        responses = [r async for r in stub.InvokeMany(many, timeout=30)]
        fanout = time.perf_counter() - start
        if any(r.result.HasField("error") for r in responses) or len(responses) != FANOUT:
            raise RuntimeError(f"InvokeMany failed: {responses[0]}")
        if trial == 0:
            continue  # warm-up: channel, first InvokeMany
        overlapped += max(r.start_ms for r in responses) < min(r.end_ms for r in responses)
        singles.append(single * 1000)
        fanouts.append(fanout * 1000)
    single_ms, fanout_ms = statistics.median(singles), statistics.median(fanouts)
    ratio = fanout_ms / single_ms
    print(
        f"fan-out: {FANOUT} x {SLEEP_MS} ms in one InvokeMany {fanout_ms:7.1f} ms   one Invoke {single_ms:6.1f} ms"
        f"   ratio {ratio:.3f}   (all {FANOUT} in flight at once in {overlapped}/{trials} trials)",
        flush=True,
    )
    return {
        "fanout_ms_50": round(fanout_ms, 1),
        "single_call_ms": round(single_ms, 1),
        "fanout_ratio_50": round(ratio, 3),
        "fanout_ratio_50_max": round(max(f / s for f, s in zip(fanouts, singles, strict=True)), 3),
        "fanout_all_overlapped_share": round(overlapped / trials, 3),
    }


async def _unary_rate(stub: tools_pb2_grpc.ToolsServiceStub, concurrency: int, seconds: float) -> float:
    """Calculator calls/s of ``concurrency`` clients, each calling Invoke back to back for ``seconds``."""
    requests = [tools_pb2.InvokeRequest(call=_call("0", "calculator", {"expression": e})) for e in EXPRESSIONS]
    stop = time.perf_counter() + seconds
    counts = [0] * concurrency

    async def client(slot: int) -> None:
        while time.perf_counter() < stop:
            await stub.Invoke(requests[counts[slot] % len(requests)], timeout=10)
            counts[slot] += 1

    start = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return sum(counts) / (time.perf_counter() - start)


async def _stream_rate(stub: tools_pb2_grpc.ToolsServiceStub, seconds: float) -> float:
    """Calculator calls/s sent as InvokeMany streams of CONCURRENCY calls, one stream at a time."""
    calls = [_call(str(i), "calculator", {"expression": EXPRESSIONS[i % len(EXPRESSIONS)]}) for i in range(CONCURRENCY)]
    request = tools_pb2.InvokeManyRequest(calls=calls)
    stop = time.perf_counter() + seconds
    done = 0
    start = time.perf_counter()
    while time.perf_counter() < stop:
        async for response in stub.InvokeMany(request, timeout=10):
            if response.result.HasField("error"):
                raise RuntimeError(response.result.error.message)
            done += 1
    return done / (time.perf_counter() - start)


async def measure_calculator(stub: tools_pb2_grpc.ToolsServiceStub, seconds: float) -> dict[str, float]:
    await _unary_rate(stub, CONCURRENCY, 1.0)  # warm-up
    rates = {
        "calculator_calls_per_s": await _unary_rate(stub, CONCURRENCY, seconds),
        "calculator_calls_per_s_c1": await _unary_rate(stub, 1, seconds),
        "calculator_calls_per_s_invoke_many": await _stream_rate(stub, seconds),
    }
    print(
        f"calculator: Invoke c={CONCURRENCY} {rates['calculator_calls_per_s']:8.1f} calls/s   "
        f"c=1 {rates['calculator_calls_per_s_c1']:8.1f} calls/s   "
        f"InvokeMany({CONCURRENCY} per stream) {rates['calculator_calls_per_s_invoke_many']:8.1f} calls/s",
        flush=True,
    )
    return {name: round(rate, 1) for name, rate in rates.items()}


async def main_async(settings: Settings, _: argparse.Namespace) -> harness.Figures:
    port, nobody = free_ports(2)
    args = [
        "serve",
        "tools",
        "--port",
        str(port),
        "--tools-module",
        "bench.sleep_plugin:sleep_ms",
        "--retrieval-target",
        f"127.0.0.1:{nobody}",  # search_docs is not measured here
    ]
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    with harness.scratch() as logs:
        async with (
            harness.serving(mesh.TOOLS, args, f"127.0.0.1:{port}", logs, 60, env) as service,
            open_channel(service.address) as channel,
        ):
            stub = tools_pb2_grpc.ToolsServiceStub(channel)
            fanout = await measure_fanout(stub, settings.fanout_trials)
            calculator = await measure_calculator(stub, settings.calculator_seconds)
    return {"cpus": os.cpu_count(), **fanout, **calculator}


if __name__ == "__main__":
    harness.main("tools", __doc__, main_async, QUICK, FULL)
