"""HTTP front benchmark: what the OpenAI-compatible front (``genmesh serve http``) costs over calling the gateway's
gRPC directly, and how fast a dropped client frees the model.

Starts the four services and the HTTP front (a process of its own, in front of the gateway) on free loopback ports,
inference on one thread. Every figure is a difference or a ratio against gRPC to the same gateway in the same run,
trials interleaved:

- sse_ttft_overhead_ms: time to the first content chunk over SSE (``POST /v1/chat/completions``, ``stream: true``)
  minus time to the first delta over gRPC, one stream at a time, the same question with retrieval off (the median
  of back-to-back differences; target ≤ 2 ms). It contains the front's extra hop (HTTP in, gRPC out), the figure
  the decision to run the front as its own process rests on. The SSE side is read by a lean client
  (bench/sse_client.py), as the gRPC side by C core; sse_ttft_overhead_httpx_ms is the same read by httpx, the
  ``openai`` package's transport, whose own Python work per request it adds;
- sse_relay_ratio_c32: completion tokens/s received over SSE over tokens/s over gRPC, 32 streams at once (the
  median of the trials' back-to-back ratios; target ≥ 0.9; sse_httpx_relay_ratio_c32 read by httpx: on two cores
  the client's own work takes CPU from the mesh); ws_relay_ratio_c32: the same over the WebSocket
  ``/v1/ws``, one socket per stream;
- disconnect_to_abort_ms: a client closes its SSE connection after the first chunk of a long answer; the time until
  the inference service's GetLoad shows no running sequence (polled every millisecond or so; median; target ≤ 100).

    python -m bench.http --quick     # about a minute, as CI runs it
    python -m bench.http             # the figures of docs/BENCHMARKS.md

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import websockets

from bench import harness
from bench.gateway import QUESTION, sampling
from bench.sse_client import LeanSseClient
from genmesh import mesh as topology
from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, free_port
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc, inference_pb2, inference_pb2_grpc

TTFT_TARGET_MS = 2.0
RELAY_TARGET = 0.9
ABORT_TARGET_MS = 100.0
INFERENCE_ARGS = {topology.INFERENCE.name: ["--threads", "1"]}
#: The long answer a client walks away from.
ABORT_MAX_TOKENS = 2000
FRONT_READY_S = 60.0


@dataclass(frozen=True, slots=True)
class Settings:
    max_tokens: int
    trials: int
    concurrency: int
    ttft_samples: int
    disconnects: int


QUICK = Settings(max_tokens=16, trials=3, concurrency=32, ttft_samples=40, disconnects=8)
FULL = Settings(max_tokens=64, trials=11, concurrency=32, ttft_samples=200, disconnects=40)

Stream = Callable[[int], Awaitable[tuple[int, float]]]
"""One answer of ``max_tokens`` through a path: (completion tokens received, seconds to the first one)."""


def chat_body(max_tokens: int) -> dict[str, object]:
    """The bench question as a chat completion, greedy, retrieval off (the same work as ``grpc_request``)."""
    return {
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "genmesh": {"retrieval": {"disabled": True}},
    }


def grpc_request(max_tokens: int) -> gateway_pb2.GatewayRequest:
    request = gateway_pb2.GatewayRequest(question=QUESTION, sampling=sampling(max_tokens))
    request.retrieval.disabled = True
    return request


@contextlib.asynccontextmanager
async def running_front(gateway: str, log_dir: Path) -> AsyncIterator[str]:
    """``genmesh serve http`` before ``gateway`` on a free port, answering /healthz for the block: its base URL."""
    port = free_port()
    log = (log_dir / "http.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "genmesh.cli", "serve", "http", "--gateway", gateway, "--port", str(port),
        "--log-level", "warning", stdout=log, stderr=log,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as client:
            deadline = time.monotonic() + FRONT_READY_S
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/healthz")).status_code == 200:
                        break
                if process.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the HTTP front did not start; see {log_dir / 'http.log'}")
                await asyncio.sleep(0.1)
        yield base
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()
        log.close()


class Paths:
    """One answer through each path: gRPC to the gateway, SSE and WebSocket through the front."""

    def __init__(
        self, gateway: gateway_pb2_grpc.GatewayServiceStub, http: httpx.AsyncClient, ws_url: str, lean: LeanSseClient
    ) -> None:
        self.gateway, self.http, self.ws_url, self.lean = gateway, http, ws_url, lean
        self.by_name: dict[str, Stream] = {
            "grpc": self.grpc,
            "sse": self.sse,
            "sse_httpx": self.sse_httpx,
            "ws": self.ws,
        }

    async def sse(self, max_tokens: int) -> tuple[int, float]:
        return await self.lean.answer("/v1/chat/completions", chat_body(max_tokens))

    async def grpc(self, max_tokens: int) -> tuple[int, float]:
        start, first, tokens = time.perf_counter(), 0.0, 0
        async for event in self.gateway.Generate(grpc_request(max_tokens), timeout=600):
            if event.HasField("delta") and event.delta.text:
                first = first or time.perf_counter() - start
            if event.HasField("complete"):
                tokens = event.complete.usage.completion_tokens
        return tokens, first

    async def sse_httpx(self, max_tokens: int) -> tuple[int, float]:
        start, first, tokens = time.perf_counter(), 0.0, 0
        async with self.http.stream("POST", "/v1/chat/completions", json=chat_body(max_tokens)) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[len("data: ") :])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = first or time.perf_counter() - start
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        return tokens, first

    async def ws(self, max_tokens: int) -> tuple[int, float]:
        async with websockets.connect(self.ws_url, max_size=None) as socket:
            start, first = time.perf_counter(), 0.0
            await socket.send(json.dumps({"type": "generate", "id": "1", "request": chat_body(max_tokens)}))
            async for raw in socket:
                message = json.loads(raw)
                if message["type"] == "chunk" and message["choices"] and message["choices"][0]["delta"].get("content"):
                    first = first or time.perf_counter() - start
                elif message["type"] == "done":
                    return int(message["usage"]["completion_tokens"]), first
                elif message["type"] == "error":
                    raise RuntimeError(f"the WebSocket answered an error: {message}")
        raise RuntimeError("the WebSocket closed before its answer was done")

    async def rate(self, name: str, max_tokens: int, concurrency: int) -> float:
        """Completion tokens/s received through ``name``, ``concurrency`` answers started together."""
        start = time.perf_counter()
        results = await asyncio.gather(*(self.by_name[name](max_tokens) for _ in range(concurrency)))
        return sum(tokens for tokens, _ in results) / (time.perf_counter() - start)


async def relay_ratio(paths: Paths, name: str, settings: Settings) -> float:
    """The median over trials of ``name``'s tokens/s over gRPC's, each pair measured back to back."""
    ratios = []
    for trial in range(settings.trials):
        rates = {}
        for side in harness.alternate(trial, name, "grpc"):
            rates[side] = await paths.rate(side, settings.max_tokens, settings.concurrency)
        ratios.append(rates[name] / rates["grpc"])
    return statistics.median(ratios)


async def ttft_overhead_ms(paths: Paths, samples: int) -> dict[str, float]:
    """Median TTFT of each side and the medians of SSE's back-to-back differences to gRPC, in milliseconds; the
    three sides' order rotates from trial to trial."""
    names = ["grpc", "sse", "sse_httpx"]
    ttfts: dict[str, list[float]] = {name: [] for name in names}
    for trial in range(samples):
        for name in names[trial % 3 :] + names[: trial % 3]:
            _, first = await paths.by_name[name](1)
            ttfts[name].append(first * 1000)

    def paired(name: str) -> float:
        return statistics.median(a - b for a, b in zip(ttfts[name], ttfts["grpc"], strict=True))

    figures = {f"{name}_ttft_ms": statistics.median(values) for name, values in ttfts.items()}
    figures["sse_ttft_overhead_ms"] = paired("sse")
    figures["sse_ttft_overhead_httpx_ms"] = paired("sse_httpx")
    return figures


async def running_count(inference: inference_pb2_grpc.InferenceServiceStub) -> int:
    return int((await inference.GetLoad(inference_pb2.GetLoadRequest(), timeout=10)).running)


async def disconnect_to_abort_ms(http: httpx.AsyncClient, inference: inference_pb2_grpc.InferenceServiceStub) -> float:
    """Milliseconds from closing an SSE answer after its first chunk to inference running nothing."""
    # ignore_eos: the answer runs until the client leaves, wherever the greedy path would have met an EOS
    body = {**chat_body(ABORT_MAX_TOKENS), "ignore_eos": True}
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        # Checked inside the loop: a line iterator left behind by ``break`` is finalized at the next await, and
        # its close drops the connection before the check (the answer was then cancelled, not running).
        async for line in response.aiter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"]:
                if await running_count(inference) != 1:
                    raise RuntimeError("the long answer is not running on inference")
                break
        closed = time.perf_counter()
    # Leaving the block closed the connection; the front sees the disconnect and cancels its gRPC call.
    while await running_count(inference):
        if time.perf_counter() - closed > 30:
            raise RuntimeError("inference still runs the answer 30 s after its client left")
    return (time.perf_counter() - closed) * 1000


async def measure(mesh: Mesh, base: str, settings: Settings) -> harness.Figures:
    limits = httpx.Limits(max_connections=settings.concurrency * 2, max_keepalive_connections=settings.concurrency * 2)
    ws_url = base.replace("http://", "ws://") + "/v1/ws"
    async with (
        open_channel(mesh.address("gateway")) as gateway_channel,
        open_channel(mesh.address("inference")) as inference_channel,
        httpx.AsyncClient(base_url=base, limits=limits, timeout=600) as http,
        contextlib.aclosing(LeanSseClient(base)) as lean,
    ):
        paths = Paths(gateway_pb2_grpc.GatewayServiceStub(gateway_channel), http, ws_url, lean)
        inference = inference_pb2_grpc.InferenceServiceStub(inference_channel)
        for name in paths.by_name:  # connections and the model's first step on every path
            await paths.rate(name, 2, 4)
        ttft = await ttft_overhead_ms(paths, settings.ttft_samples)
        print(f"TTFT: SSE {ttft['sse_ttft_ms']:.2f} ms (httpx {ttft['sse_httpx_ttft_ms']:.2f}), gRPC "
              f"{ttft['grpc_ttft_ms']:.2f} ms; SSE - gRPC (paired median) {ttft['sse_ttft_overhead_ms']:.2f} ms "
              f"(target ≤ {TTFT_TARGET_MS}; httpx {ttft['sse_ttft_overhead_httpx_ms']:.2f} ms)")  # fmt: skip
        sse_ratio = await relay_ratio(paths, "sse", settings)
        httpx_ratio = await relay_ratio(paths, "sse_httpx", settings)
        ws_ratio = await relay_ratio(paths, "ws", settings)
        print(f"tokens/s at {settings.concurrency} streams over gRPC's: SSE {sse_ratio:.3f} (httpx {httpx_ratio:.3f}), "
              f"WebSocket {ws_ratio:.3f} "
              f"(target ≥ {RELAY_TARGET})")  # fmt: skip
        aborts = [await disconnect_to_abort_ms(http, inference) for _ in range(settings.disconnects)]
        abort_ms = statistics.median(aborts)
        print(f"SSE client gone → inference running nothing: median {abort_ms:.1f} ms, max {max(aborts):.1f} ms "
              f"over {len(aborts)} (target ≤ {ABORT_TARGET_MS:.0f})")  # fmt: skip
    c = settings.concurrency
    return {
        **{name: round(value, 3) for name, value in ttft.items()},
        f"sse_relay_ratio_c{c}": round(sse_ratio, 3),
        f"sse_httpx_relay_ratio_c{c}": round(httpx_ratio, 3),
        f"ws_relay_ratio_c{c}": round(ws_ratio, 3),
        "disconnect_to_abort_ms": round(abort_ms, 1),
        "disconnect_to_abort_max_ms": round(max(aborts), 1),
    }


async def main_async(settings: Settings, _: argparse.Namespace) -> harness.Figures:
    with harness.scratch() as scratch:
        async with (
            harness.running_mesh(scratch, INFERENCE_ARGS) as mesh,
            running_front(mesh.address("gateway"), scratch) as base,
        ):
            return await measure(mesh, base, settings)


if __name__ == "__main__":
    harness.main("http", __doc__, main_async, QUICK, FULL)
