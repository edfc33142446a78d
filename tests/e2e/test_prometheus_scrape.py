"""A real Prometheus server scrapes a running mesh (`genmesh up`'s processes with metrics, the HTTP front too) every
second, and what
an operator asks it agrees with what a client saw: every target up, the gateway's token counter equal to the
tokens the client received (its increase and rate over the traffic too), time-to-first-token quantiles
consistent with the client's own timings within the histogram's buckets; and every metric the dashboard and the
alerts use is one the mesh serves, of the kind they use it as."""

from __future__ import annotations

import asyncio
import functools
import math
import time
from pathlib import Path

import pytest
from support.prometheus import Prometheus, binary, running_prometheus
from support.promql import definitions, expressions, metric_names, resolve

from genmesh import mesh
from genmesh.channels import open_channel
from genmesh.cli.http_front import HTTP, start_http, stop_http
from genmesh.cli.launcher import free_port, start_mesh
from genmesh.metrics import LATENCY_BUCKETS
from genmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

ANSWERS = 5
BOUNDS = (0.0, *LATENCY_BUCKETS, math.inf)


async def _answer(stub: gateway_pb2_grpc.GatewayServiceStub, i: int) -> tuple[int, float, int]:
    """One Generate: the tokens the client received, its time to the first one, the completion tokens reported."""
    request = gateway_pb2.GatewayRequest(
        request_id=f"prometheus-e2e-{i}",
        question="How does the with statement use a context manager?",
        sampling=common_pb2.SamplingParams(max_tokens=12, temperature=0.0),
    )
    start = time.perf_counter()
    tokens, first, usage = 0, 0.0, -1
    async for event in stub.Generate(request, timeout=120):
        if event.HasField("delta"):
            first = first or time.perf_counter() - start
            tokens += len(event.delta.token_ids)
        elif event.HasField("complete"):
            usage = event.complete.usage.completion_tokens
    return tokens, first, usage


def _bucket(value: float) -> int:
    """The index i of the bucket (BOUNDS[i], BOUNDS[i + 1]] that holds ``value``."""
    return next(i for i in range(len(BOUNDS) - 1) if value <= BOUNDS[i + 1])


def _consistent(estimate: float, measured: float) -> bool:
    """Whether Prometheus's quantile ``estimate`` (of the gateway's TTFT) fits the client's ``measured`` one: the
    client's is no shorter than the bottom of the estimate's bucket (the client waits for the gateway), and at
    most one bucket above it (what the client adds: its stub, the loopback)."""
    i = _bucket(estimate)
    return BOUNDS[i] <= measured <= BOUNDS[min(i + 2, len(BOUNDS) - 1)]


def _nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def test_prometheus_scrapes_the_mesh_and_agrees_with_the_client(tmp_path: Path) -> None:
    if binary() is None:
        pytest.skip("the prometheus binary is not installed (Debian: apt-get install prometheus; CI installs it)")
    running = await start_mesh(log_dir=tmp_path / "logs", extra_args={"inference": ["--threads", "1"]}, metrics=True)
    http = None
    try:
        http = await start_http(running, "127.0.0.1", free_port(), tmp_path / "logs", 60, metrics=True)
        targets = {name: service.metrics_url for name, service in running.services.items()}
        targets[HTTP.name] = http.metrics_url
        with running_prometheus(tmp_path / "prometheus", targets) as prometheus:
            up = await asyncio.to_thread(prometheus.wait, "every target up", lambda: _all_up(prometheus, 5))
            assert {dict(labels)["service"] for labels in up} == {s.name for s in mesh.SERVICES} | {HTTP.name}
            before = time.time()
            async with open_channel(running.address("gateway")) as channel:
                stub = gateway_pb2_grpc.GatewayServiceStub(channel)
                answers = [await _answer(stub, i) for i in range(ANSWERS)]
            await asyncio.to_thread(_check_the_counters_and_quantiles, prometheus, answers, before)
            await asyncio.to_thread(_check_the_operator_files_metrics, prometheus)
    finally:
        if http is not None:
            await stop_http(http, grace_s=2.0)
        await running.stop(grace_s=2.0)


def _all_up(prometheus: Prometheus, count: int) -> dict[frozenset[tuple[str, str]], float] | None:
    found = prometheus.query("up")
    return found if len(found) == count and set(found.values()) == {1.0} else None


def _equals(prometheus: Prometheus, promql: str, value: float) -> bool:
    return bool(prometheus.scalar(promql) == value)


def _check_the_counters_and_quantiles(
    prometheus: Prometheus, answers: list[tuple[int, float, int]], before: float
) -> None:
    tokens = sum(received for received, _, _ in answers)
    assert tokens > 0 and tokens == sum(usage for _, _, usage in answers)
    counter = "genmesh_gateway_generated_tokens_total"
    # The raw counters: exactly the client's count, once a scrape of each target after the traffic is in.
    for name in (counter, "genmesh_inference_generation_tokens_total"):
        prometheus.wait(f"{name} == {tokens}", functools.partial(_equals, prometheus, name, tokens))
    assert prometheus.scalar("genmesh_gateway_time_to_first_token_seconds_count") == len(answers)
    # Over a window from before the traffic (a sample of 0 in it): the samples in it grew by exactly the count;
    # increase() extrapolates that to the window's edges (by how much depends on when the scrapes landed, which a
    # busy machine delays), never below it.
    window = f"{math.ceil(time.time() - before) + 3}s"
    grown = prometheus.scalar(f"max_over_time({counter}[{window}]) - min_over_time({counter}[{window}])")
    assert grown == tokens, (grown, tokens)
    increase = prometheus.scalar(f"increase({counter}[{window}])")
    assert increase is not None and increase >= tokens, (increase, tokens)
    rate = prometheus.scalar(f"rate({counter}[{window}])")
    assert rate is not None and rate > 0
    measured = [ttft for _, ttft, _ in answers]
    for q in (0.5, 0.99):
        estimate = prometheus.scalar(
            f"histogram_quantile({q}, sum by (le) (rate(genmesh_gateway_time_to_first_token_seconds_bucket[{window}])))"
        )
        assert estimate is not None and estimate > 0
        assert _consistent(estimate, _nearest_rank(measured, q)), (q, estimate, sorted(measured))
        engine = prometheus.scalar(
            f"histogram_quantile({q}, sum by (le) "
            f"(rate(genmesh_inference_time_to_first_token_seconds_bucket[{window}])))"
        )
        # inference's TTFT is part of the gateway's: at most the top of the gateway's bucket
        assert engine is not None and 0 < engine <= BOUNDS[_bucket(estimate) + 1], (q, engine, estimate)


def _check_the_operator_files_metrics(prometheus: Prometheus) -> None:
    """Every metric the dashboard and the alerts name is in the mesh's scrapes, as the kind they use it as."""
    known = definitions()
    served = prometheus.api("metadata")
    missing = {}
    for where, expr in expressions().items():
        for name in metric_names(expr):
            resolved = resolve(name, known)
            assert resolved is not None, (where, name)
            base = resolved[0]
            # a counter's family is named without _total in OpenMetrics, which Prometheus asks for
            entries = served.get(base, []) + served.get(base.removesuffix("_total"), [])
            kinds = {entry["type"] for entry in entries} or ({"gauge"} if base == "up" else set())
            histogram = name != base
            if not kinds or (histogram and kinds != {"histogram"}):
                missing[where] = f"{name}: served as {kinds or 'nothing'}"
    assert missing == {}
