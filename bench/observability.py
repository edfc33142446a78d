"""Observability benchmark: what Prometheus metrics and OpenTelemetry tracing cost, and whether traces are whole.

Starts two meshes on free loopback ports at once, both with inference on one thread: an observed one, every
service serving /metrics (``--metrics-port``) and tracing every request (``--trace-sample-ratio 1.0``) to an OTLP
receiver running in this process (tests/support/otlp_receiver.py), and a plain one with both off. Every figure is
a ratio or a difference against the plain mesh in the same run, trials interleaved A/B:

- observed_relay_ratio_c32: tokens/s received through the observed mesh's gateway over the plain one's, 32
  streams at once, bench/gateway.py's request (retrieval off: client → gateway → inference), the median of the
  trials' back-to-back ratios (target ≥ 0.95); with it, cpu_us_per_token_<side>_<process>: the CPU time (from
  /proc) of the gateway, of inference and of the whole mesh over those trials, per token received, which shows
  where the cost lies and suffers less from the machine's other work than tokens/s do;
- observed_ttft_overhead_ms: time to first token through the observed gateway minus through the plain one (the
  median of the differences of back-to-back pairs), one stream at a time, the same request (target ≤ 0.3 ms);
  with it, cpu_us_per_request_<side>_<process>: the CPU time of those one-token requests, per request (what the
  per-call work costs, which a median of times to first token hides when other work shares the cores);
- metrics_scrape_ms: the median time of a GET of the observed gateway's /metrics (connect, answer, read), from
  a process of its own, while 32 streams run through the gateway (metrics_scrape_idle_ms: while it is idle);
- trace_completeness: of traced_requests requests with retrieval (top 1) and one forced tool call, each sent
  with a traceparent of its own, the share whose trace the receiver got spans of all four services for
  (target 1.0).

    python -m bench.observability --quick     # about a minute, as CI runs it
    python -m bench.observability             # the figures of docs/BENCHMARKS.md

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import statistics
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench import harness
from bench.paired import Gateways, full_path_request, relay_request
from genmesh import mesh as topology
from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh
from genmesh.v1 import gateway_pb2_grpc

if TYPE_CHECKING:
    from support.otlp_receiver import OtlpReceiver, ReceivedSpan

ROOT = Path(__file__).resolve().parents[1]
RELAY_TARGET = 0.95
TTFT_TARGET_MS = 0.3
INFERENCE_ARGS = ["--threads", "1"]
#: Every service's ``service.name`` in the traces.
SERVICE_NAMES = frozenset(f"genmesh-{spec.name}" for spec in topology.SERVICES)
#: How long the last spans may take to reach the receiver: the batch processor's 5 s delay, and a margin.
EXPORT_WAIT_S = 20.0
#: The processes whose CPU per token is shown (retrieval and tools are idle on the relay's path).
CPU_SHOWN = ("gateway", "inference", "mesh")
#: Traced requests sent at once.
TRACED_CONCURRENCY = 4


@dataclass(frozen=True, slots=True)
class Settings:
    max_tokens: int
    trials: int
    concurrency: int
    ttft_samples: int
    scrapes: int
    traced_requests: int


QUICK = Settings(max_tokens=16, trials=3, concurrency=32, ttft_samples=50, scrapes=20, traced_requests=16)
FULL = Settings(max_tokens=64, trials=11, concurrency=32, ttft_samples=200, scrapes=100, traced_requests=64)


def mesh_args(*flags: str) -> dict[str, list[str]]:
    """Every service's extra flags: ``flags``, and inference on one thread."""
    return {spec.name: [*(INFERENCE_ARGS if spec is topology.INFERENCE else ()), *flags] for spec in topology.SERVICES}


@contextlib.asynccontextmanager
async def meshes(scratch: Path) -> AsyncIterator[tuple[Mesh, Mesh, OtlpReceiver]]:
    """(observed mesh, plain mesh, the receiver of the observed one's spans), all running for the block."""
    sys.path.insert(0, str(ROOT / "tests"))  # the tests' OTLP receiver, as bench/security.py takes their cases
    from support.otlp_receiver import running_receiver

    async with running_receiver() as receiver:
        traced = mesh_args("--otlp-endpoint", receiver.endpoint, "--trace-sample-ratio", "1.0")
        async with (
            harness.running_mesh(scratch / "observed", traced, metrics=True) as observed,
            harness.running_mesh(scratch / "plain", mesh_args("--otlp-endpoint", "")) as plain,
        ):
            yield observed, plain, receiver


Cpu = dict[str, dict[str, float]]
"""Figures by side (observed, plain), then by process (a service's name, or ``mesh``: all four)."""


def cpu_seconds(pid: int) -> float:
    """CPU seconds the threads of ``pid`` running now have used so far, to the nanosecond (/proc's schedstat;
    its stat counts in 10 ms ticks, too coarse for one request)."""
    used = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that just ended
            used += int((task / "schedstat").read_text().split()[0])
    return used / 1e9


def mesh_cpu(sides: Mapping[str, Mesh]) -> Cpu:
    """CPU seconds each process of each side has used so far."""
    return {
        side: {name: cpu_seconds(service.process.pid) for name, service in mesh.services.items()}
        for side, mesh in sides.items()
    }


def cpu_per(before: Cpu, after: Cpu, units: Mapping[str, int]) -> Cpu:
    """Microseconds of CPU per unit of work between two ``mesh_cpu`` readings, ``units[side]`` units done on
    each side."""
    used: Cpu = {}
    for side, count in units.items():
        seconds = {name: after[side][name] - before[side][name] for name in after[side]}
        seconds["mesh"] = sum(seconds.values())
        used[side] = {name: s * 1e6 / count for name, s in seconds.items()}
    return used


def cpu_figures(cpu: Cpu, per: str) -> harness.Figures:
    """``cpu_us_per_<per>_<side>_<process>`` of the processes in CPU_SHOWN."""
    return {f"cpu_us_per_{per}_{side}_{name}": round(cpu[side][name], 1) for side in cpu for name in CPU_SHOWN}


def cpu_line(cpu: Cpu, per: str) -> str:
    shown = "   ".join(f"{name} {cpu['observed'][name]:.0f}/{cpu['plain'][name]:.0f} us" for name in CPU_SHOWN)
    return f"  CPU per {per}, observed / plain: {shown}"


SCRAPER = """
import sys, time, urllib.request
for _ in sys.stdin:
    start = time.perf_counter()
    with urllib.request.urlopen(sys.argv[1], timeout=30) as answer:
        body = answer.read()
    ms = (time.perf_counter() - start) * 1000
    print(ms, len(body), int(b"genmesh_rpc_in_flight" in body), flush=True)
"""
"""A scraper in a process of its own, so that this one's busy event loop (the streams' client) does not hold up
its reads: one GET of the URL per line read, answered with its milliseconds, its size, and whether it holds the
RPC metrics."""


@contextlib.asynccontextmanager
async def scraper(url: str) -> AsyncIterator[Callable[[], Awaitable[tuple[float, int]]]]:
    """A function that scrapes ``url`` once from the scraper process: (milliseconds, bytes)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRAPER, url, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdin is not None and process.stdout is not None
    stdin, stdout = process.stdin, process.stdout

    async def scrape() -> tuple[float, int]:
        stdin.write(b"\n")
        await stdin.drain()
        ms, size, whole = (await stdout.readline()).split()
        assert whole == b"1", f"{url} answered {size.decode()} bytes without genmesh_rpc_in_flight"
        return float(ms), int(size)

    try:
        yield scrape
    finally:
        stdin.close()
        await process.wait()


@dataclass(frozen=True, slots=True)
class Scrapes:
    busy_ms: list[float]
    """Each scrape made while the streams ran."""
    idle_ms: list[float]
    """Each scrape made while the gateway had nothing else to do."""
    size: int
    """The last body's size in bytes."""


async def scrape_under_load(gateways: Gateways, url: str, settings: Settings) -> Scrapes:
    """``settings.scrapes`` scrapes of ``url`` made while ``settings.concurrency`` streams ran through the observed
    gateway, and as many made while it was idle."""
    times: list[float] = []
    request = relay_request(settings.max_tokens)
    async with scraper(url) as scrape:
        idle = [(await scrape())[0] for _ in range(settings.scrapes)]
        while len(times) < settings.scrapes:
            streams = asyncio.ensure_future(gateways.run("observed", request, settings.concurrency))
            await asyncio.sleep(0.05)  # the streams under way
            while not streams.done() and len(times) < settings.scrapes:
                ms, size = await scrape()
                if not streams.done():  # only scrapes that ended while the streams still ran
                    times.append(ms)
            await streams
    return Scrapes(times, idle, size)


def traceparent() -> tuple[str, str]:
    """(a new trace id, a sampled W3C traceparent that starts it)."""
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


async def trace_completeness(stub: gateway_pb2_grpc.GatewayServiceStub, receiver: OtlpReceiver, count: int) -> int:
    """How many of ``count`` traced full-path requests have spans of all four services at the receiver."""
    receiver.clear()
    trace_ids: list[str] = []
    semaphore = asyncio.Semaphore(TRACED_CONCURRENCY)

    async def one() -> None:
        trace_id, header = traceparent()
        trace_ids.append(trace_id)
        async with semaphore:
            stream = stub.Generate(full_path_request(1), metadata=(("traceparent", header),), timeout=120)
            async for _ in stream:
                pass

    await asyncio.gather(*(one() for _ in range(count)))

    def complete(spans: list[ReceivedSpan]) -> set[str]:
        services: dict[str, set[str]] = {trace_id: set() for trace_id in trace_ids}
        for span in spans:
            if span.trace_id in services:
                services[span.trace_id].add(span.service)
        return {trace_id for trace_id, seen in services.items() if seen >= SERVICE_NAMES}

    with contextlib.suppress(TimeoutError):
        await receiver.wait_for(lambda spans: len(complete(spans)) == count, EXPORT_WAIT_S)
    return len(complete(receiver.spans))


async def measure(
    gateways: Gateways, sides: dict[str, Mesh], receiver: OtlpReceiver, settings: Settings
) -> harness.Figures:
    await gateways.warm()
    before = mesh_cpu(sides)
    rates = await gateways.tokens_per_s(
        "observed", "plain", relay_request(settings.max_tokens), settings.trials, settings.concurrency
    )
    per_token = cpu_per(before, mesh_cpu(sides), rates.tokens)
    observed_rate, plain_rate = rates.medians
    ratio = rates.paired_ratio
    print(
        f"c={settings.concurrency}: observed {observed_rate:8.1f} tok/s   plain {plain_rate:8.1f} tok/s"
        f"   ratio {ratio:.3f} (median of {settings.trials} pairs; target >= {RELAY_TARGET})",
        flush=True,
    )
    print("  pairs:", " ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(rates.first, rates.second, strict=True)), flush=True)
    print(cpu_line(per_token, "token"), flush=True)
    before = mesh_cpu(sides)
    ttft = await gateways.ttft("observed", "plain", settings.ttft_samples, relay_request(1))
    per_request = cpu_per(before, mesh_cpu(sides), dict.fromkeys(sides, settings.ttft_samples))
    print(
        f"ttft: observed {ttft.first_ms:.2f} ms   plain {ttft.second_ms:.2f} ms   overhead {ttft.overhead_ms:.2f} ms"
        f" (target <= {TTFT_TARGET_MS})",
        flush=True,
    )
    print(cpu_line(per_request, "request"), flush=True)
    url = sides["observed"].services["gateway"].metrics_url
    scrapes = await scrape_under_load(gateways, url, settings)
    scrape_ms, idle_ms = statistics.median(scrapes.busy_ms), statistics.median(scrapes.idle_ms)
    print(
        f"gateway /metrics under {settings.concurrency} streams: median {scrape_ms:.2f} ms,"
        f" p90 {harness.percentile(scrapes.busy_ms, 0.9):.2f} ms ({settings.scrapes} scrapes, {scrapes.size} bytes);"
        f" idle: median {idle_ms:.2f} ms",
        flush=True,
    )
    stub = gateways.stubs["observed"]
    whole = await trace_completeness(stub, receiver, settings.traced_requests)
    completeness = whole / settings.traced_requests
    print(
        f"traces with spans of all four services: {whole} of {settings.traced_requests} ({completeness:.3f};"
        " target 1.0)",
        flush=True,
    )
    return {
        f"tokens_per_s_observed_c{settings.concurrency}": round(observed_rate, 1),
        f"tokens_per_s_plain_c{settings.concurrency}": round(plain_rate, 1),
        f"observed_relay_ratio_c{settings.concurrency}": round(ratio, 3),
        **cpu_figures(per_token, "token"),
        "ttft_observed_ms": round(ttft.first_ms, 2),
        "ttft_plain_ms": round(ttft.second_ms, 2),
        "observed_ttft_overhead_ms": round(ttft.overhead_ms, 2),
        **cpu_figures(per_request, "request"),
        "metrics_scrape_ms": round(scrape_ms, 2),
        "metrics_scrape_p90_ms": round(harness.percentile(scrapes.busy_ms, 0.9), 2),
        "metrics_scrape_idle_ms": round(idle_ms, 2),
        "metrics_scrape_bytes": scrapes.size,
        "trace_completeness": round(completeness, 3),
        "traced_requests": settings.traced_requests,
    }


async def main_async(settings: Settings, _: argparse.Namespace) -> harness.Figures:
    with harness.scratch() as scratch:
        async with (
            meshes(scratch / "logs") as (observed, plain, receiver),
            open_channel(observed.address("gateway")) as observed_channel,
            open_channel(plain.address("gateway")) as plain_channel,
        ):
            gateways = Gateways({"observed": observed_channel, "plain": plain_channel})
            figures = await measure(gateways, {"observed": observed, "plain": plain}, receiver, settings)
    return {"max_tokens": settings.max_tokens, **figures}


if __name__ == "__main__":
    harness.main("observability", __doc__, main_async, QUICK, FULL)
