"""Resilience benchmark: what a client sees when services are slow, failing, killed or flooded.

Starts one mesh on free loopback ports (the tools service with bench/sleep_plugin.py's ``sleep_ms`` tool, the
gateway capped at a few concurrent streams), then runs the scenarios one after another against it, killing
and restarting services with fault injection where a scenario needs it, and stops everything at the end:

- baseline: no fault;
- retrieval killed: answers still stream, flagged Degraded; with require_all_stages they fail UNAVAILABLE;
- retrieval back with 30 % of queries failing UNAVAILABLE: the channel's retries hide them;
- retrieval past its budget (a 5 ms per-request budget): Degraded DEADLINE_EXCEEDED, the answer proceeds;
- a tool past its budget: the other tool's result arrives, the slow one is DEADLINE_EXCEEDED;
- a deadline shorter than the generation: DEADLINE_EXCEEDED on time, inference's load back to 0;
- a client's cancel: how long until inference drops the sequence (GetLoad) and the tools service ends a call;
- a flood of 4x the stream cap: the excess get RESOURCE_EXHAUSTED with RetryInfo at once;
- slow readers: many streams read slowly through a second, uncapped gateway; its RSS is sampled from /proc;
- kill -9 of inference mid-stream: every client gets UNAVAILABLE within 1 s; the restarted service (with
  30 % of Generate calls failing UNAVAILABLE) is used again without restarting the gateway, and the gateway's
  retry before the first token hides those failures.

A request is *lost* when it hangs or ends in anything but the scenario's expected outcome; there must be none.
(A request whose every attempt met an injected fault ends UNAVAILABLE: the expected end of bounded retries,
not a loss; it lowers the retry success rate.) Attempt counts come from the services' own per-RPC log lines.

    python -m bench.resilience --quick    # about a minute, as CI runs it
    python -m bench.resilience            # the figures of docs/RESILIENCE.md

Prints a table (fault, expected, observed, requests, lost, p99 latency); the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench import harness
from genmesh import mesh as topology
from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, ServiceProcess, free_port, start_service, wait_ready
from genmesh.status import code_value, retry_delay_s
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc, inference_pb2, inference_pb2_grpc

QUESTION = "What does the with statement do?"
LONG_QUESTION = "Explain how the garbage collector finds reference cycles."
CAP = 8
GENERATE_ATTEMPTS = 5
TOOLS_ARGS = ["--tools-module", "bench.sleep_plugin:sleep_ms"]
INFERENCE_ARGS = ["--threads", "1", "--max-waiting", "256"]
RETRIEVAL_FLAKY = ["--faults", "Query:abort=UNAVAILABLE,percent=30"]
INFERENCE_FLAKY = [*INFERENCE_ARGS, "--faults", "Generate:abort=UNAVAILABLE,percent=30"]
UNAVAILABLE = code_value(grpc.StatusCode.UNAVAILABLE)
DEADLINE_EXCEEDED = code_value(grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass(frozen=True, slots=True)
class Settings:
    requests: int
    """Requests per scenario (sequential ones)."""
    retry_requests: int
    slow_readers: int
    kill_clients: int


QUICK = Settings(requests=6, retry_requests=30, slow_readers=100, kill_clients=4)
FULL = Settings(requests=20, retry_requests=200, slow_readers=200, kill_clients=8)


@dataclass(slots=True)
class Outcome:
    """How one request ended: ``status`` is OK or a code name; ``degraded`` lists stage=CODE."""

    status: str
    latency_ms: float
    degraded: list[str] = field(default_factory=list)
    tool_errors: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    retry_delay_s: float | None = None
    detail: str = ""


@dataclass(slots=True)
class Row:
    fault: str
    expected: str
    outcomes: list[Outcome]
    lost: int
    observed: str = ""

    @property
    def passed(self) -> bool:
        return self.lost == 0 and bool(self.outcomes)

    def p99_ms(self) -> float:
        latencies = sorted(o.latency_ms for o in self.outcomes)
        return latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)] if latencies else 0.0


def ask(max_tokens: int = 8, retrieval: bool = True) -> gateway_pb2.GatewayRequest:
    request = gateway_pb2.GatewayRequest(question=QUESTION)
    request.sampling.max_tokens = max_tokens
    request.retrieval.disabled = not retrieval
    return request


def long_answer() -> gateway_pb2.GatewayRequest:
    """A request whose greedy answer runs to the model's context (about 480 tokens, seconds on a CPU)."""
    request = ask(max_tokens=4096, retrieval=False)
    request.question = LONG_QUESTION
    request.sampling.temperature = 0.0
    return request


async def run(
    stub: gateway_pb2_grpc.GatewayServiceStub, request: gateway_pb2.GatewayRequest, deadline_s: float
) -> Outcome:
    """Send one request and read its stream to the end; a hang ends at 2x its deadline as status HANG."""
    started = time.perf_counter()
    outcome = Outcome("NO_COMPLETION", 0.0)
    try:
        async with asyncio.timeout(deadline_s * 2 + 5):
            async for event in stub.Generate(request, timeout=deadline_s):
                if event.HasField("delta"):
                    outcome.tokens += len(event.delta.token_ids)
                elif event.HasField("tool_result") and event.tool_result.HasField("error"):
                    outcome.tool_errors[event.tool_result.call_id] = event.tool_result.error.code
                elif event.HasField("complete"):
                    outcome.status = "OK"
                    outcome.degraded = [f"{d.stage}={_code_name(d.code)}" for d in event.complete.degraded]
    except grpc.aio.AioRpcError as error:
        outcome.status = error.code().name
        outcome.retry_delay_s = retry_delay_s(error)
        outcome.detail = error.details() or ""
    except TimeoutError:
        outcome.status = "HANG"
    outcome.latency_ms = (time.perf_counter() - started) * 1000.0
    return outcome


def _code_name(value: int) -> str:
    return next((c.name for c in grpc.StatusCode if c.value[0] == value), str(value))


def exhausted(outcome: Outcome) -> bool:
    """A request whose every attempt met an injected UNAVAILABLE: the bounded retries' expected failure."""
    return outcome.status == "UNAVAILABLE" and "injected fault" in outcome.detail


def observed(outcomes: Sequence[Outcome]) -> str:
    """The outcomes, counted: ``5 OK, 1 OK+retrieval=UNAVAILABLE``."""
    counts: dict[str, int] = {}
    for o in outcomes:
        key = o.status + ("+" + ",".join(o.degraded) if o.degraded else "")
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {key}" for key, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def rpc_count(service: ServiceProcess, method: str, status: str = "") -> int:
    """Per-RPC log lines of ``method`` (ending with ``status`` when given) the service wrote so far."""
    if service.log_path is None or not service.log_path.exists():
        return 0
    needle = f"method=/{method} "
    return sum(
        1
        for line in service.log_path.read_text(errors="replace").splitlines()
        if "msg=rpc " in line and needle in line and (not status or f"status={status}" in line)
    )


async def restart(mesh: Mesh, name: str, extra: Sequence[str]) -> float:
    """Start a stopped service again on its port; seconds until it was SERVING."""
    old = mesh.services[name]
    host = old.address.rsplit(":", 1)[0]
    ports = {n: int(s.address.rsplit(":", 1)[1]) for n, s in mesh.services.items()}
    args = topology.serve_args(topology.BY_NAME[name], host, ports, {s.name: host for s in topology.SERVICES})
    started = time.perf_counter()
    log_dir = old.log_path.parent if old.log_path is not None else None
    service = await start_service(topology.BY_NAME[name], [*args, *extra], old.address, log_dir)
    mesh.services[name] = service
    await wait_ready(service, 300)
    return time.perf_counter() - started


async def kill9(mesh: Mesh, name: str) -> None:
    process = mesh.services[name].process
    os.kill(process.pid, signal.SIGKILL)
    await process.wait()


async def sequential(count: int, one: Callable[[], Awaitable[Outcome]]) -> list[Outcome]:
    return [await one() for _ in range(count)]


class Bench:
    """The scenarios, run in order against one mesh."""

    def __init__(self, mesh: Mesh, stub: gateway_pb2_grpc.GatewayServiceStub, settings: Settings) -> None:
        self.mesh = mesh
        self.stub = stub
        self.settings = settings
        self.rows: list[Row] = []
        self.figures: dict[str, float] = {}

    def add(self, fault: str, expected: str, outcomes: list[Outcome], ok: Callable[[Outcome], bool]) -> Row:
        row = Row(fault, expected, outcomes, sum(not ok(o) for o in outcomes), observed(outcomes))
        self.rows.append(row)
        print(f"  {fault}: {row.observed} (lost {row.lost}, p99 {row.p99_ms():.0f} ms)", flush=True)
        return row

    async def baseline(self) -> None:
        outcomes = await sequential(self.settings.requests, lambda: run(self.stub, ask(), 60))
        self.add("none (baseline)", "OK", outcomes, lambda o: o.status == "OK" and not o.degraded)

    async def retrieval_killed(self) -> None:
        await kill9(self.mesh, "retrieval")
        outcomes = await sequential(self.settings.requests, lambda: run(self.stub, ask(), 60))
        self.add(
            "retrieval killed",
            "OK + Degraded retrieval UNAVAILABLE",
            outcomes,
            lambda o: o.status == "OK" and o.degraded == ["retrieval=UNAVAILABLE"] and o.tokens > 0,
        )
        strict = ask()
        strict.require_all_stages = True
        outcomes = await sequential(self.settings.requests, lambda: run(self.stub, strict, 60))
        self.add("retrieval killed, require_all_stages", "UNAVAILABLE", outcomes, lambda o: o.status == "UNAVAILABLE")

    async def retrieval_flaky(self) -> None:
        self.figures["retrieval_restart_s"] = round(await restart(self.mesh, "retrieval", RETRIEVAL_FLAKY), 2)
        await self._until_sources()
        retrieval = self.mesh.services["retrieval"]
        query = "genmesh.v1.RetrievalService/Query"
        before, failed_before = rpc_count(retrieval, query), rpc_count(retrieval, query, "UNAVAILABLE")
        outcomes = await sequential(self.settings.retry_requests, lambda: run(self.stub, ask(), 60))
        await asyncio.sleep(0.2)
        attempts = rpc_count(retrieval, query) - before
        failures = rpc_count(retrieval, query, "UNAVAILABLE") - failed_before
        clean = sum(o.status == "OK" and not o.degraded for o in outcomes)
        self.figures["query_requests"] = len(outcomes)
        self.figures["query_attempts"] = attempts
        self.figures["query_injected_failures"] = failures
        self.figures["query_retry_success_rate"] = round(clean / len(outcomes), 4)
        self.add(
            "30% of retrieval Query UNAVAILABLE",
            "OK, retries hide the faults",
            outcomes,
            lambda o: o.status == "OK" and o.tokens > 0,
        )
        print(
            f"    retries: {clean}/{len(outcomes)} answers without a degraded stage; {attempts} Query attempts "
            f"({attempts / len(outcomes):.2f} per request), {failures} injected failures",
            flush=True,
        )

    async def _until_sources(self) -> None:
        """Wait until the gateway uses retrieval again (its circuit closed)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            outcome = await run(self.stub, ask(max_tokens=1), 30)
            if outcome.status == "OK" and not outcome.degraded:
                return
            await asyncio.sleep(0.2)

    async def retrieval_budget(self) -> None:
        request = ask()
        request.retrieval.timeout_ms = 5
        outcomes = await sequential(self.settings.requests, lambda: run(self.stub, request, 60))
        self.add(
            "retrieval past a 5 ms budget",
            "OK + Degraded retrieval",
            outcomes,
            lambda o: (
                o.status == "OK"
                and o.degraded in (["retrieval=DEADLINE_EXCEEDED"], ["retrieval=UNAVAILABLE"])
                and o.tokens > 0
            ),
        )

    async def tool_budget(self) -> None:
        request = ask(retrieval=False)
        request.tool_calls.add(call_id="quick", name="calculator", arguments_json='{"expression": "2**10"}')
        slow = request.tool_calls.add(call_id="slow", name="sleep_ms", arguments_json='{"ms": 10000}')
        slow.timeout_ms = 300
        outcomes = await sequential(self.settings.requests, lambda: run(self.stub, request, 60))
        self.add(
            "tool past its 300 ms budget",
            "OK + tool:slow DEADLINE_EXCEEDED",
            outcomes,
            lambda o: o.status == "OK" and o.tool_errors == {"slow": DEADLINE_EXCEEDED} and o.tokens > 0,
        )

    async def deadline(self) -> None:
        async with open_channel(self.mesh.address("inference")) as channel:
            inference = inference_pb2_grpc.InferenceServiceStub(channel)
            request = long_answer()
            outcomes = await sequential(self.settings.requests, lambda: run(self.stub, request, 0.5))
            await asyncio.sleep(0.3)
            running = (await inference.GetLoad(inference_pb2.GetLoadRequest(), timeout=5)).running
        self.figures["inference_running_after_deadlines"] = running
        self.add(
            "deadline 0.5 s < generation time",
            "DEADLINE_EXCEEDED in time",
            outcomes,
            lambda o: o.status == "DEADLINE_EXCEEDED" and o.latency_ms < 1500 and running == 0,
        )

    async def client_cancel(self) -> None:
        """Streams cancelled by their client: time from the cancel until inference dropped the sequence
        (GetLoad running back to 0) and until the tools service ended a sleeping tool call (its log line)."""
        async with open_channel(self.mesh.address("inference")) as channel:
            inference = inference_pb2_grpc.InferenceServiceStub(channel)

            async def running() -> bool:
                load = await inference.GetLoad(inference_pb2.GetLoadRequest(), timeout=5)
                return bool(load.running > 0)

            outcomes = []
            for _ in range(self.settings.kill_clients):
                call = self.stub.Generate(long_answer(), timeout=120)
                stream = call.__aiter__()
                while not (await anext(stream)).HasField("delta"):
                    pass
                call.cancel()
                outcomes.append(await _until_stopped(running))
        self.figures["cancel_to_inference_max_ms"] = round(max(o.latency_ms for o in outcomes), 1)
        self.add(
            "client cancels mid-stream (latency: cancel to inference's batch)",
            "CANCELLED at inference within 100 ms",
            outcomes,
            lambda o: o.status == "CANCELLED" and o.latency_ms < 100,
        )
        tools = self.mesh.services["tools"]
        method = "genmesh.v1.ToolsService/InvokeMany"
        request = ask(retrieval=False)
        request.tool_calls.add(call_id="slow", name="sleep_ms", arguments_json='{"ms": 10000}')
        outcomes = []
        for _ in range(self.settings.kill_clients):
            ended = rpc_count(tools, method, "CANCELLED")
            call = self.stub.Generate(request, timeout=60)
            await asyncio.sleep(0.3)  # the tool call is in flight
            call.cancel()
            outcomes.append(await _until_stopped(functools.partial(_still, tools, method, ended)))
        self.figures["cancel_to_tools_max_ms"] = round(max(o.latency_ms for o in outcomes), 1)
        self.add(
            "client cancels during a tool call (latency: cancel to tools)",
            "CANCELLED at tools within 100 ms",
            outcomes,
            lambda o: o.status == "CANCELLED" and o.latency_ms < 100,
        )

    async def flood(self) -> None:
        outcomes = await asyncio.gather(
            *(run(self.stub, ask(max_tokens=64, retrieval=False), 120) for _ in range(4 * CAP))
        )
        refused = [o for o in outcomes if o.status == "RESOURCE_EXHAUSTED"]
        served = [o for o in outcomes if o.status == "OK"]
        self.figures["flood_refused"] = len(refused)
        self.figures["flood_refusal_max_ms"] = round(max((o.latency_ms for o in refused), default=0.0), 1)
        self.add(
            f"flood: {4 * CAP} streams, cap {CAP}",
            "OK or RESOURCE_EXHAUSTED+RetryInfo",
            list(outcomes),
            lambda o: (
                (o.status == "OK" and o.tokens > 0) or (o.status == "RESOURCE_EXHAUSTED" and bool(o.retry_delay_s))
            ),
        )
        print(f"    {len(served)} served, {len(refused)} refused", flush=True)

    async def slow_readers(self, logs: Path) -> None:
        host = "127.0.0.1"
        ports = {n: int(s.address.rsplit(":", 1)[1]) for n, s in self.mesh.services.items()} | {"gateway": free_port()}
        args = topology.serve_args(topology.GATEWAY, host, ports, {s.name: host for s in topology.SERVICES})
        address = f"{host}:{ports['gateway']}"
        async with (
            harness.serving(topology.GATEWAY, [*args, "--max-streams", "1024"], address, logs / "wide", 120) as wide,
            open_channel(address) as channel,
        ):
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            await run(stub, ask(retrieval=False), 60)
            baseline = peak = _rss_mb(wide.process.pid)

            async def slow() -> Outcome:
                started = time.perf_counter()
                outcome = Outcome("NO_COMPLETION", 0.0)
                try:
                    async for event in stub.Generate(ask(max_tokens=16, retrieval=False), timeout=300):
                        outcome.tokens += len(event.delta.token_ids)
                        if event.HasField("complete"):
                            outcome.status = "OK"
                        await asyncio.sleep(0.05)
                except grpc.aio.AioRpcError as error:
                    outcome.status = error.code().name
                outcome.latency_ms = (time.perf_counter() - started) * 1000.0
                return outcome

            readers = asyncio.gather(*(slow() for _ in range(self.settings.slow_readers)))
            while not readers.done():
                peak = max(peak, _rss_mb(wide.process.pid))
                await asyncio.sleep(0.1)
            outcomes = list(await readers)
        growth = peak - baseline
        self.figures["slow_readers"] = self.settings.slow_readers
        self.figures["gateway_rss_idle_mb"] = round(baseline, 1)
        self.figures["gateway_rss_peak_mb"] = round(peak, 1)
        self.add(
            f"{self.settings.slow_readers} slow readers (RSS +{growth:.0f} MB)",
            "OK, RSS growth < 100 MB",
            outcomes,
            lambda o: o.status == "OK" and growth < 100,
        )

    async def kill_inference(self) -> None:
        n = self.settings.kill_clients
        calls = [self.stub.Generate(long_answer(), timeout=120) for _ in range(n)]
        streams = [call.__aiter__() for call in calls]
        for stream in streams:
            while not (await anext(stream)).HasField("delta"):
                pass

        async def rest(stream: AsyncIterator[gateway_pb2.GatewayEvent]) -> Outcome:
            outcome = Outcome("NO_COMPLETION", 0.0)
            try:
                async with asyncio.timeout(30):
                    async for _ in stream:
                        pass
            except grpc.aio.AioRpcError as error:
                outcome.status = error.code().name
            except TimeoutError:
                outcome.status = "HANG"
            outcome.latency_ms = (time.perf_counter() - killed) * 1000.0
            return outcome

        readers = [asyncio.create_task(rest(s)) for s in streams]
        killed = time.perf_counter()
        await kill9(self.mesh, "inference")
        outcomes = list(await asyncio.gather(*readers))
        self.figures["kill_unavailable_max_ms"] = round(max(o.latency_ms for o in outcomes), 1)
        self.add(
            "kill -9 inference mid-stream (latency: kill to status)",
            "UNAVAILABLE within 1 s",
            outcomes,
            lambda o: o.status == "UNAVAILABLE" and o.latency_ms < 1000,
        )
        down = await sequential(self.settings.requests, lambda: run(self.stub, ask(), 30))
        self.add(
            "inference down",
            "UNAVAILABLE, no hang (a probe waits 1 s for a reconnect)",
            down,
            lambda o: o.status == "UNAVAILABLE" and o.latency_ms < 3000,
        )
        method = "genmesh.v1.InferenceService/Generate"
        before = rpc_count(self.mesh.services["inference"], method)
        failed_before = rpc_count(self.mesh.services["inference"], method, "UNAVAILABLE")
        self.figures["inference_restart_s"] = round(await restart(self.mesh, "inference", INFERENCE_FLAKY), 2)
        inference = self.mesh.services["inference"]
        outcomes = await sequential(self.settings.retry_requests, lambda: run(self.stub, ask(), 60))
        await asyncio.sleep(0.2)
        attempts = rpc_count(inference, method) - before
        failures = rpc_count(inference, method, "UNAVAILABLE") - failed_before
        self.figures["generate_requests"] = len(outcomes)
        self.figures["generate_attempts"] = attempts
        self.figures["generate_injected_failures"] = failures
        self.figures["generate_retry_success_rate"] = round(sum(o.status == "OK" for o in outcomes) / len(outcomes), 4)
        self.add(
            "restarted inference, 30% of Generate UNAVAILABLE",
            f"OK, no gateway restart ({GENERATE_ATTEMPTS} attempts)",
            outcomes,
            lambda o: (o.status == "OK" and o.tokens > 0) or exhausted(o),
        )
        print(
            f"    retries: {attempts} Generate attempts for {len(outcomes)} requests "
            f"({attempts / len(outcomes):.2f} per request), {failures} injected failures",
            flush=True,
        )


async def _until_stopped(busy: Callable[[], Awaitable[bool]]) -> Outcome:
    """Poll ``busy`` every 2 ms from now until it is False: CANCELLED with the time it took, or HANG after 5 s."""
    started = time.perf_counter()
    deadline = started + 5
    while await busy():
        if time.perf_counter() > deadline:
            return Outcome("HANG", (time.perf_counter() - started) * 1000.0)
        await asyncio.sleep(0.002)
    return Outcome("CANCELLED", (time.perf_counter() - started) * 1000.0)


async def _still(service: ServiceProcess, method: str, ended_before: int) -> bool:
    """Whether ``method`` has not yet logged a CANCELLED end beyond the ``ended_before`` ones."""
    return rpc_count(service, method, "CANCELLED") <= ended_before


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def table(rows: Sequence[Row]) -> str:
    header = "| fault | expected | observed | requests | lost | p99 latency (ms) |"
    lines = [header, "|---|---|---|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row.fault} | {row.expected} | {row.observed} | {len(row.outcomes)} | {row.lost} | {row.p99_ms():.0f} |"
        )
    return "\n".join(lines)


async def main_async(settings: Settings, _: argparse.Namespace) -> harness.Figures:
    extra_args = {
        "tools": TOOLS_ARGS,
        "inference": INFERENCE_ARGS,
        "gateway": [
            *("--max-streams", str(CAP), "--circuit-cooldown", "1"),
            *("--generate-attempts", str(GENERATE_ATTEMPTS)),
        ],
    }
    with harness.scratch() as logs:
        async with (
            harness.running_mesh(logs / "mesh", extra_args) as mesh,
            open_channel(mesh.address("gateway")) as channel,
        ):
            bench = Bench(mesh, gateway_pb2_grpc.GatewayServiceStub(channel), settings)
            await run(bench.stub, ask(), 60)  # warm up: channels, caches, the model's first step
            await bench.baseline()
            await bench.retrieval_budget()
            await bench.tool_budget()
            await bench.deadline()
            await bench.client_cancel()
            await bench.flood()
            await bench.slow_readers(logs)
            await bench.retrieval_killed()
            await bench.retrieval_flaky()
            await bench.kill_inference()
    print()
    print(table(bench.rows))
    print()
    return {
        "cpus": os.cpu_count(),
        "scenarios": len(bench.rows),
        "scenarios_passed": sum(row.passed for row in bench.rows),
        "requests": sum(len(row.outcomes) for row in bench.rows),
        "requests_lost": sum(row.lost for row in bench.rows),
        **bench.figures,
    }


if __name__ == "__main__":
    harness.main("resilience", __doc__, main_async, QUICK, FULL)
