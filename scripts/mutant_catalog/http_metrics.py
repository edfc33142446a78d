"""Mutants of the HTTP front's Prometheus metrics (gateway/http/metrics.py and its wiring)."""

from __future__ import annotations

from mutant_catalog.mutant import Mutant

_METRICS = "tests/http_front/test_front_metrics.py"
_COUNTED = f"{_METRICS}::test_requests_are_counted_by_route_template_and_status"
_LEAVES = f"{_METRICS}::test_a_client_that_leaves_mid_answer_is_counted_and_streams_are_counted_while_open"

MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "http-metrics-route-label-keeps-parameter-types",
        "gateway/http/metrics.py",
        'return route.path_format or "/"',
        'return route.path or "/"',
        (_COUNTED,),
    ),
    Mutant(
        "http-metrics-sse-stream-never-closed",
        "gateway/http/metrics.py",
        "stream.dec()",
        "pass",
        (_COUNTED,),
    ),
    Mutant(
        "http-metrics-every-chunk-is-a-first-chunk",
        "gateway/http/metrics.py",
        "first = False",
        "pass",
        (_COUNTED,),
    ),
    Mutant(
        "http-metrics-status-not-recorded",
        "gateway/http/metrics.py",
        "series.handled(status).inc()",
        "series.handled(200).inc()",
        (_COUNTED,),
    ),
    Mutant(
        "http-metrics-in-flight-never-ends",
        "gateway/http/metrics.py",
        "series.in_flight.dec()",
        "pass",
        (_COUNTED,),
    ),
    Mutant(
        "http-metrics-websocket-accept-not-seen",
        "gateway/http/metrics.py",
        "status = 101",
        "pass",
        (_LEAVES,),
    ),
    Mutant(
        "http-metrics-sse-disconnect-not-counted",
        "gateway/http/openai_routes.py",
        "self.on_disconnect()",
        "pass",
        (_LEAVES,),
    ),
    Mutant(
        "http-serve-metrics-port-records-nothing",
        "gateway/http/server.py",
        "app = build_app(channel, model=args.model_name, tools=tools, allowed_origins=origins, metrics=metrics)",
        "app = build_app(channel, model=args.model_name, tools=tools, allowed_origins=origins)",
        (f"{_METRICS}::test_serve_http_serves_its_metrics_on_the_metrics_port",),
    ),
    Mutant(
        "up-starts-the-front-without-metrics",
        "genmesh/cli/up.py",
        "http = await start_http(running, args.host, args.http_port, log_dir, args.ready_timeout, args.metrics)",
        "http = await start_http(running, args.host, args.http_port, log_dir, args.ready_timeout)",
        ("tests/e2e/test_cli_up.py::test_up_demo_then_ctrl_c",),
    ),
)
