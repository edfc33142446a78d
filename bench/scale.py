"""Scale-out benchmark (issue #12): inference replicas behind one gateway, balanced, failed over and drained.

Starts one retrieval and one tools service and four inference replicas (``--threads 1`` each: two big ones,
``--max-running 32``, a small one, ``--max-running 1``, and one started with ``--drain-delay``), then, per
scenario, gateways over some of them, all on free loopback ports. Requests skip retrieval
(RetrievalOptions.disabled), so the work measured is the gateway's and inference's. Every figure compares with
a baseline or a count from the same run:

- replica_throughput_ratio: tokens/s through a gateway over two big replicas over tokens/s through a gateway
  over one of them: the very same set of greedy requests, 64 in flight (enough to fill both), trials
  alternated. Beside it, the cores (CPU seconds a second, from /proc) that the replicas, the gateway, this
  client and the whole machine used meanwhile (cores_*), and tokens per CPU second of inference: where the
  second replica's gain went;
- lb_p99_ttft_ratio: p99 time to first token under round-robin over p99 under least-load, over a big replica
  and the small one, the same open-loop Poisson arrivals for both policies. The rate is one the big replica
  alone could absorb (at most 0.6 of what it sustained in the throughput trials) and at most 1.5 times what
  the small one serves for the half round-robin sends it (its queue grows; least-load sends it less);
- failover_failed_requests: requests that failed while one of two big replicas was kill -9'd under open-loop
  load (half what one sustains), other than the streams it was answering (failover_streams_cut, which end
  UNAVAILABLE: their tokens are lost); those still before their first token are retried on the other;
- drain_failed_requests: requests that failed while a replica drained on SIGTERM (``--drain-delay 2``) under the
  same load, with how many streams it finished while draining and how soon it exited;
- jobs_lost_multi_gateway: from bench/multi_gateway.py (two gateways on one Postgres, kill -9 one).

    python -m bench.scale --quick     # about two minutes, as CI runs it
    python -m bench.scale             # the figures of docs/BENCHMARKS.md

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import cast

from bench import harness
from bench.scale_fleet import Fleet, cpu_seconds, fleet, machine_busy_seconds, own_cpu_seconds
from bench.scale_load import Outcome, arrivals, ask, closed_loop, open_loop, stream, tally, ttft_ms
from genmesh import mesh
from genmesh.channels import open_channel
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc, inference_pb2, inference_pb2_grpc

REPLICA = ["--threads", "1", "--max-waiting", "1024"]
BIG, SMALL = "32", "1"
IN_FLIGHT = 64
"""Streams open at once in the throughput trials: 32 running on each of two replicas (``--max-running 32``)."""
DRAIN_DELAY_S = 2.0
CHURN_LOAD = 0.5
"""Arrival rate of the failover and drain runs as a share of the request rate one big replica sustained."""
LB_BIG_LOAD = 0.6
LB_SMALL_OVERLOAD = 1.5
"""The balancing trials' arrival rate: at most LB_BIG_LOAD of what the big replica sustained (it alone could
absorb them), and at most LB_SMALL_OVERLOAD times what the small replica serves, for the half of them that
round-robin sends it (more than it serves, so that its queue grows: the case a balancer is for)."""


@dataclass(frozen=True, slots=True)
class Settings:
    max_tokens: int
    throughput_requests: int
    throughput_trials: int
    lb_requests: int
    lb_trials: int
    """Trials per policy (each its own arrivals of ``lb_requests``)."""
    churn_s: float
    """Length of the failover and drain runs; the replica goes down a third of the way in."""


QUICK = Settings(max_tokens=48, throughput_requests=128, throughput_trials=2, lb_requests=30, lb_trials=1, churn_s=6.0)
FULL = Settings(max_tokens=64, throughput_requests=128, throughput_trials=4, lb_requests=150, lb_trials=2, churn_s=20.0)


@contextlib.asynccontextmanager
async def _client(address: str) -> AsyncIterator[gateway_pb2_grpc.GatewayServiceStub]:
    """A stub on its own channel to the gateway at ``address``, closed after the block."""
    async with open_channel(address) as channel:
        yield gateway_pb2_grpc.GatewayServiceStub(channel)


async def _warm(stub: gateway_pb2_grpc.GatewayServiceStub, tag: str, settings: Settings) -> None:
    """Channels, caches and each replica's first steps, outside the measurement."""
    await closed_loop(stub, [ask(i, settings.max_tokens, f"warm-{tag}") for i in range(8)], 8)


async def _throughput_trial(
    fleet: Fleet, address: str, names: Sequence[str], requests: Sequence[gateway_pb2.GatewayRequest]
) -> tuple[int, float, dict[str, float]]:
    """Tokens and seconds of one closed-loop run of ``requests`` through the gateway at ``address``, and the
    cores (CPU seconds per second) used meanwhile by: the processes ``names`` (grouped as inference and gateway),
    this client, and the whole machine."""
    pids = {name: fleet.pid(name) for name in names}

    def sample() -> dict[str, float]:
        used = {"inference": 0.0, "gateway": 0.0, "client": own_cpu_seconds(), "machine": machine_busy_seconds()}
        for name, pid in pids.items():
            used[name.split("-")[0]] += cpu_seconds(pid)
        return used

    async with _client(address) as stub:
        before = sample()
        elapsed, outcomes = await closed_loop(stub, requests, IN_FLIGHT)
        after = sample()
    if failed := [o for o in outcomes if not o.ok]:
        raise RuntimeError(f"throughput trial: {tally(outcomes)}: {failed[0].status} {failed[0].detail}")
    return sum(o.tokens for o in outcomes), elapsed, {k: (after[k] - before[k]) / elapsed for k in before}


async def measure_throughput(fleet: Fleet, settings: Settings) -> dict[str, float]:
    """One replica against two, the same requests, trials alternated; and the cores each process used."""
    requests = [ask(i, settings.max_tokens, "tput") for i in range(settings.throughput_requests)]
    replicas = {"1_replica": ["inference-1"], "2_replicas": ["inference-1", "inference-2"]}
    rates: dict[str, list[float]] = {side: [] for side in replicas}
    per_core: dict[str, list[float]] = {side: [] for side in replicas}
    cores: dict[str, list[float]] = {}
    request_rates: list[float] = []
    async with (
        fleet.gateway("gateway-1", replicas["1_replica"]) as over_one,
        fleet.gateway("gateway-2", replicas["2_replicas"]) as over_two,
    ):
        addresses = {"1_replica": over_one, "2_replicas": over_two}
        for side, address in addresses.items():
            async with _client(address) as stub:
                await _warm(stub, side, settings)
        for trial in range(settings.throughput_trials):
            for side in harness.alternate(trial, "1_replica", "2_replicas"):
                gateway = "gateway-1" if side == "1_replica" else "gateway-2"
                tokens, elapsed, used = await _throughput_trial(
                    fleet, addresses[side], [*replicas[side], gateway], requests
                )
                rates[side].append(tokens / elapsed)
                per_core[side].append(tokens / elapsed / used["inference"])
                if side == "1_replica":
                    request_rates.append(len(requests) / elapsed)
                for group, value in used.items():
                    cores.setdefault(f"cores_{group}_{side}", []).append(value)
                print(
                    f"  {side:<10}: {tokens / elapsed:7.1f} tok/s ({tokens} tokens in {elapsed:5.2f} s); cores used: "
                    + ", ".join(f"{group} {value:.2f}" for group, value in used.items()),
                    flush=True,
                )
    one, two = statistics.median(rates["1_replica"]), statistics.median(rates["2_replicas"])
    print(f"replica_throughput_ratio = {two / one:.3f}  (2 replicas {two:.1f} tok/s, 1 replica {one:.1f})")
    return {
        "replica_throughput_ratio": round(two / one, 3),
        "tokens_per_s_1_replica": round(one, 1),
        "tokens_per_s_2_replicas": round(two, 1),
        "requests_per_s_1_replica": round(statistics.median(request_rates), 2),
        **{f"tokens_per_inference_core_s_{side}": round(statistics.median(v), 1) for side, v in per_core.items()},
        **{key: round(statistics.median(values), 2) for key, values in cores.items()},
    }


async def _serial_rate(fleet: Fleet, replica: str, settings: Settings) -> float:
    """Requests a second that ``replica`` serves one after another (through a gateway over it alone)."""
    async with fleet.gateway(f"gateway-{replica}", [replica]) as address, _client(address) as stub:
        await stream(stub, ask(0, settings.max_tokens, f"{replica}-warm"), time.perf_counter())
        _, outcomes = await closed_loop(stub, [ask(i, settings.max_tokens, replica) for i in range(8)], 1)
    return 1.0 / statistics.median(o.ended - o.due for o in outcomes)


async def measure_balancing(fleet: Fleet, settings: Settings, big_rate: float) -> dict[str, float]:
    """Round-robin against least-load over a big and a small replica, the same arrivals for both."""
    small_rate = await _serial_rate(fleet, "inference-small", settings)
    rate = min(LB_BIG_LOAD * big_rate, LB_SMALL_OVERLOAD * 2 * small_rate)
    print(
        f"  the big replica sustains {big_rate:.2f} requests/s, the small one serves {small_rate:.2f}/s: arrivals "
        f"at {rate:.2f}/s",
        flush=True,
    )
    replicas = ["inference-1", "inference-small"]
    balancing = {policy: ["--inference-balancing", policy] for policy in ("round-robin", "least-load")}
    outcomes: dict[str, list[Outcome]] = {policy: [] for policy in balancing}
    async with (
        fleet.gateway("gateway-rr", replicas, balancing["round-robin"]) as rr,
        fleet.gateway("gateway-ll", replicas, balancing["least-load"]) as ll,
    ):
        addresses = {"round-robin": rr, "least-load": ll}
        for policy, address in addresses.items():
            async with _client(address) as stub:
                await _warm(stub, policy, settings)
        for trial in range(settings.lb_trials):
            offsets = arrivals(settings.lb_requests, rate, seed=trial)
            for policy in harness.alternate(trial, "round-robin", "least-load"):
                requests = [ask(i, settings.max_tokens, f"lb-{policy}-{trial}") for i in range(settings.lb_requests)]
                async with _client(addresses[policy]) as stub:
                    trial_outcomes = await open_loop(stub, requests, offsets)
                outcomes[policy] += trial_outcomes
                print(
                    f"  {policy:<11}: TTFT p50 {ttft_ms(trial_outcomes, 0.5):7.1f} ms  p99 "
                    f"{ttft_ms(trial_outcomes, 0.99):7.1f} ms  ({tally(trial_outcomes)})",
                    flush=True,
                )
    rr_p99, ll_p99 = ttft_ms(outcomes["round-robin"], 0.99), ttft_ms(outcomes["least-load"], 0.99)
    ratio = rr_p99 / ll_p99
    served = {policy: fleet.generate_calls("inference-small", f"scale-lb-{policy}-") for policy in balancing}
    print(f"lb_p99_ttft_ratio = {ratio:.2f}  (round-robin {rr_p99:.1f} ms, least-load {ll_p99:.1f} ms)")
    return {
        "lb_p99_ttft_ratio": round(ratio, 2),
        "lb_arrival_rate_per_s": round(rate, 2),
        "lb_big_sustains_per_s": round(big_rate, 2),
        "lb_small_serves_per_s": round(small_rate, 2),
        "lb_small_offered_load_round_robin": round(rate / 2 / small_rate, 2),
        "lb_requests_per_policy": len(outcomes["least-load"]),
        "lb_ttft_p99_ms_round_robin": rr_p99,
        "lb_ttft_p99_ms_least_load": ll_p99,
        "lb_ttft_p50_ms_round_robin": ttft_ms(outcomes["round-robin"], 0.5),
        "lb_ttft_p50_ms_least_load": ttft_ms(outcomes["least-load"], 0.5),
        "lb_failed_requests": sum(not o.ok for group in outcomes.values() for o in group),
        **{
            f"lb_share_small_{policy.replace('-', '_')}": round(served[policy] / len(outcomes[policy]), 3)
            for policy in balancing
        },
    }


async def _churn(
    fleet: Fleet, settings: Settings, rate: float, victim: str, down: Callable[[], Awaitable[None]]
) -> tuple[list[Outcome], float]:
    """Open-loop load on a least-load gateway over inference-1 and ``victim``; ``down`` runs a third of the way
    in. The outcomes, and when ``down`` began."""
    async with fleet.gateway(f"gateway-{victim}", ["inference-1", victim]) as address, _client(address) as stub:
        await _warm(stub, victim, settings)
        count = max(10, round(rate * settings.churn_s))
        requests = [ask(i, settings.max_tokens, victim) for i in range(count)]

        async def later() -> float:
            await asyncio.sleep(settings.churn_s / 3)
            await _until_running(fleet.address(victim))
            at = time.perf_counter()
            await down()
            return at

        outcomes, at = await asyncio.gather(open_loop(stub, requests, arrivals(count, rate, seed=7)), later())
    return outcomes, at


async def _until_running(address: str, timeout_s: float = 5.0) -> None:
    """Wait (at most ``timeout_s``) until the replica at ``address`` is generating, so that going down meets
    streams in flight."""
    async with open_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        until = time.monotonic() + timeout_s
        while time.monotonic() < until:
            if (await stub.GetLoad(inference_pb2.GetLoadRequest(), timeout=1.0)).running > 0:
                return
            await asyncio.sleep(0.01)


async def measure_failover(fleet: Fleet, settings: Settings, rate: float) -> dict[str, float]:
    outcomes, killed = await _churn(fleet, settings, rate, "inference-2", lambda: fleet.kill("inference-2"))
    cut = [o for o in outcomes if o.status == "UNAVAILABLE" and o.tokens > 0 and o.ended >= killed]
    failed = [o for o in outcomes if not o.ok and o not in cut]
    recovered = max((o.ended - killed for o in cut), default=0.0)
    retried = _retries(fleet, "gateway-inference-2")
    print(
        f"failover: {tally(outcomes)}; {len(cut)} streams cut on the killed replica (all ended within "
        f"{recovered * 1000:.0f} ms of the kill), {retried} retried on the other before their first token, "
        f"{len(failed)} other requests failed" + (f": {failed[0].status} {failed[0].detail}" if failed else ""),
        flush=True,
    )
    return {
        "failover_failed_requests": len(failed),
        "failover_streams_cut": len(cut),
        "failover_requests": len(outcomes),
        "failover_cut_status_max_ms": round(recovered * 1000, 1),
        "failover_retried": retried,
    }


async def measure_drain(fleet: Fleet, settings: Settings, rate: float) -> dict[str, float]:
    victim = "inference-drain"
    process = fleet.services[victim].process
    exits: list[asyncio.Task[float]] = []

    async def exited() -> float:
        await process.wait()
        return time.perf_counter()

    async def sigterm() -> None:
        fleet.terminate(victim)
        exits.append(asyncio.create_task(exited()))

    outcomes, signalled = await _churn(fleet, settings, rate, victim, sigterm)
    done, _ = await asyncio.wait(exits, timeout=DRAIN_DELAY_S + 30)
    exit_s = exits[0].result() - signalled if done else float("nan")
    failed = [o for o in outcomes if not o.ok]
    finished, refused = _drained_calls(fleet, victim)
    print(
        f"drain: {tally(outcomes)}; the draining replica finished {finished} streams after SIGTERM, refused "
        f"{refused} calls, stopped serving {_drain_log_s(fleet, victim):.1f} s and exited {process.returncode} "
        f"{exit_s:.1f} s after SIGTERM",
        flush=True,
    )
    return {
        "drain_failed_requests": len(failed),
        "drain_requests": len(outcomes),
        "drain_streams_finished_while_draining": finished,
        "drain_calls_refused": refused,
        "drain_retried": _retries(fleet, f"gateway-{victim}"),
        "drain_exit_code": process.returncode if process.returncode is not None else -1,
        "drain_stopped_s": round(_drain_log_s(fleet, victim), 1),
        "drain_exit_s": round(exit_s, 1),
    }


def _retries(fleet: Fleet, gateway: str) -> int:
    """Generate attempts the gateway made again (on the other replica) after one failed before its first token."""
    return sum('msg="retrying Generate"' in line for line in fleet.log_lines(gateway))


def _drain_log_s(fleet: Fleet, name: str) -> float:
    """Seconds from the replica's "stopping" log line (its SIGTERM) to its "stopped" one (server and engine
    closed; what follows until the process ends is the interpreter's exit); -1 without both lines."""
    stamps = {}
    for line in fleet.log_lines(name):
        for event in ("msg=stopping ", "msg=stopped "):
            if event in line and line.startswith("ts="):
                stamps[event] = datetime.fromisoformat(line[3:].split(" ", 1)[0])
    if len(stamps) < 2:
        return -1.0
    return (stamps["msg=stopped "] - stamps["msg=stopping "]).total_seconds()


def _drained_calls(fleet: Fleet, name: str) -> tuple[int, int]:
    """Generate calls the replica ended OK, and those it refused UNAVAILABLE, after its SIGTERM (its log)."""
    lines = fleet.log_lines(name)
    after = next((i for i, line in enumerate(lines) if "msg=stopping" in line), len(lines))
    calls = [line for line in lines[after:] if "msg=rpc " in line and "InferenceService/Generate " in line]
    return sum("status=OK" in line for line in calls), sum("status=UNAVAILABLE" in line for line in calls)


async def measure_jobs_lost_multi_gateway(quick: bool) -> harness.Figures:
    """bench/multi_gateway.py's figures (jobs_lost_multi_gateway), when that benchmark exists."""
    # HOOK (issue #12): bench/multi_gateway.py is written separately; until it exists the figure is null.
    try:
        module = importlib.import_module("bench.multi_gateway")
    except ModuleNotFoundError as error:
        if error.name != "bench.multi_gateway":
            raise
        print("jobs_lost_multi_gateway: bench/multi_gateway.py is not there yet: null", flush=True)
        return {"jobs_lost_multi_gateway": None}
    measure = cast(Callable[[bool], Awaitable[harness.Figures]], module.measure_jobs_lost_multi_gateway)
    figures = await measure(quick)
    # its supporting figures keep their benchmark's name in front (jobs_failed -> multi_gateway_jobs_failed)
    return {k if k == "jobs_lost_multi_gateway" else f"multi_gateway_{k}": v for k, v in figures.items()}


async def main_async(settings: Settings, args: argparse.Namespace) -> harness.Figures:
    started = time.perf_counter()
    figures: harness.Figures = {
        "cpus": os.cpu_count(),
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "max_tokens": settings.max_tokens,
    }
    with harness.scratch() as scratch:
        logs = args.keep_logs or scratch
        async with fleet(logs) as services:
            await services.start_all(
                (mesh.RETRIEVAL, "retrieval", []),
                (mesh.TOOLS, "tools", []),
                (mesh.INFERENCE, "inference-1", [*REPLICA, "--max-running", BIG]),
                (mesh.INFERENCE, "inference-2", [*REPLICA, "--max-running", BIG]),
                (mesh.INFERENCE, "inference-small", [*REPLICA, "--max-running", SMALL]),
                (mesh.INFERENCE, "inference-drain", [*REPLICA, "--drain-delay", str(DRAIN_DELAY_S)]),
            )
            print(f"[{time.perf_counter() - started:5.1f} s] started", flush=True)
            throughput = await measure_throughput(services, settings)
            figures |= throughput
            print(f"[{time.perf_counter() - started:5.1f} s] throughput measured", flush=True)
            big_rate = float(throughput["requests_per_s_1_replica"])
            figures |= await measure_balancing(services, settings, big_rate)
            print(f"[{time.perf_counter() - started:5.1f} s] balancing measured", flush=True)
            rate = CHURN_LOAD * big_rate
            figures |= await measure_drain(services, settings, rate)
            print(f"[{time.perf_counter() - started:5.1f} s] drain measured", flush=True)
            figures |= await measure_failover(services, settings, rate)
            print(f"[{time.perf_counter() - started:5.1f} s] failover measured", flush=True)
    figures |= await measure_jobs_lost_multi_gateway(bool(args.quick))
    figures["load_average_at_end"] = round(os.getloadavg()[0], 2)
    figures["duration_s"] = round(time.perf_counter() - started, 1)
    return figures


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-logs", type=Path, help="write the services' logs to this directory and keep them")


if __name__ == "__main__":
    harness.main("scale", __doc__, main_async, QUICK, FULL, options)
