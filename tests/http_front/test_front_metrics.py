"""The HTTP front's Prometheus metrics (gateway/http/metrics.py), scraped over HTTP from a real front before a real
gateway: requests counted by route template and status (an unknown path under one label, never the raw path), the
SSE streams and their time to the first chunk, a client that leaves mid-answer; and `genmesh serve http
--metrics-port` serving them from its own process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import websockets
from served import ServedGateway, served_gateway
from support.scrape import delta, scrape_async, scrape_until, series, value

from genmesh.cli.launcher import free_port
from genmesh.metrics import Metrics, MetricsServer
from http_front.front import MODEL, Front, served_front, spawned_front

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "What does yield do?"}]}
STARTED, HANDLED = "genmesh_http_requests_started_total", "genmesh_http_requests_handled_total"


@asynccontextmanager
async def metered_front(tmp_path: Path) -> AsyncIterator[tuple[ServedGateway, Front, httpx.AsyncClient, str]]:
    """A front recording its metrics, before a served gateway: the gateway, the front, a client of it, and the URL
    its metrics are scraped at."""
    metrics = Metrics()
    exporter = MetricsServer(metrics, "127.0.0.1", 0)
    try:
        async with (
            served_gateway(tmp_path, metrics=False) as served,
            served_front(served.channel, metrics=metrics) as front,
            httpx.AsyncClient(base_url=front.url, timeout=20) as http,
        ):
            yield served, front, http, exporter.url
    finally:
        await exporter.close()


async def test_requests_are_counted_by_route_template_and_status(tmp_path: Path) -> None:
    async with metered_front(tmp_path) as (_, _, http, metrics_url):
        for _ in range(3):
            assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200
        for _ in range(2):
            async with http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
                assert [line async for line in response.aiter_lines()][-2] == "data: [DONE]"
        refused = await http.post("/v1/chat/completions", json={**CHAT, "temperature": "hot"})
        unknown = [await http.get(f"/v1/nothing-{i}") for i in range(4)]
        wrong_method = await http.get("/v1/chat/completions")
        samples = await scrape_async(metrics_url)
    chat = "/v1/chat/completions"
    assert refused.status_code == 400 and {r.status_code for r in unknown} == {404} and wrong_method.status_code == 405
    assert value(samples, STARTED, route=chat) == 3 + 2 + 1
    assert series(samples, HANDLED) == {  # a wrong method is the /v1/ fallback's answer
        frozenset({("route", chat), ("code", "200")}): 5,
        frozenset({("route", chat), ("code", "400")}): 1,
        frozenset({("route", "/v1/{rest}"), ("code", "404")}): 4,
        frozenset({("route", "/v1/{rest}"), ("code", "405")}): 1,
    }
    assert not any("nothing" in text for labels in series(samples, STARTED) for _, text in labels)
    assert value(samples, "genmesh_http_request_handling_seconds_count", route=chat) == 6
    assert value(samples, "genmesh_http_time_to_first_chunk_seconds_count", route=chat) == 2
    assert value(samples, "genmesh_http_requests_in_flight", route=chat) == 0
    assert value(samples, "genmesh_http_streams_open", protocol="sse") == 0


async def test_a_client_that_leaves_mid_answer_is_counted_and_streams_are_counted_while_open(tmp_path: Path) -> None:
    async with metered_front(tmp_path) as (served, front, http, metrics_url):
        served.replicas.replicas[0].servicer.delta_delay_s = 0.5
        before = await scrape_async(metrics_url)
        async with http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
            # scraped inside the loop: the line iterator left by break closes the connection at the next await
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    during = await scrape_async(metrics_url)
                    break
        after = await scrape_until(
            metrics_url,
            lambda s: value(s, "genmesh_http_client_disconnects_total", route="/v1/chat/completions") > 0,
        )
        async with websockets.connect(front.ws_url):
            socket_open = await scrape_until(
                metrics_url, lambda s: value(s, "genmesh_http_streams_open", protocol="websocket") == 1
            )
        closed = await scrape_until(metrics_url, lambda s: value(s, HANDLED, route="/v1/ws", code="101") == 1)
    assert value(during, "genmesh_http_streams_open", protocol="sse") == 1
    assert value(during, "genmesh_http_requests_in_flight", route="/v1/chat/completions") == 1
    assert delta(after, before, "genmesh_http_client_disconnects_total", route="/v1/chat/completions") == 1
    assert value(after, "genmesh_http_streams_open", protocol="sse") == 0
    assert value(socket_open, "genmesh_http_requests_in_flight", route="/v1/ws") == 1
    assert value(closed, "genmesh_http_streams_open", protocol="websocket") == 0


async def test_serve_http_serves_its_metrics_on_the_metrics_port(tmp_path: Path) -> None:
    async with served_gateway(tmp_path, metrics=False) as served:
        metrics_port = free_port()
        async with spawned_front(served.address, tmp_path / "http.log", "--metrics-port", str(metrics_port)):
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            samples = await scrape_until(url, lambda s: value(s, HANDLED, route="/healthz", code="200") >= 1)
    assert any(name == "genmesh_build_info" for name, _ in samples)
    assert "metrics on http://127.0.0.1:" in (tmp_path / "http.log").read_text()
