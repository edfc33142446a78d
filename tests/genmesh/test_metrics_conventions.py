"""The metric naming rules are enforced at definition; definitions are made once per registry; every metric the
services define is in one row of docs/OBSERVABILITY.md's tables, which name no other; the --metrics-port flag and
`genmesh up`'s plan."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from prometheus_client.registry import CollectorRegistry

from gateway.gauges import NAMES as GATEWAY_GAUGES
from gateway.http.metrics import HttpMetrics
from gateway.metrics import GatewayMetrics
from genmesh import mesh
from genmesh.cli.launcher import plan_mesh
from genmesh.config import add_server_flags
from genmesh.metrics import LATENCY_BUCKETS, Metrics, RpcMetrics, check_name, process_metrics
from services.inference.engine import EngineConfig, LoadStats
from services.inference.metrics import InferenceMetrics
from services.retrieval.metrics import RetrievalMetrics
from services.tools.metrics import ToolsMetrics

DOCS = Path(__file__).resolve().parents[2] / "docs" / "OBSERVABILITY.md"


@pytest.mark.parametrize(
    ("name", "kind", "labels", "rule"),
    [
        ("rpc_started_total", "counter", (), "start with 'genmesh_'"),
        ("genmesh_RPC_total", "counter", (), "snake case"),
        ("genmesh_latency_ms", "histogram", (), "base units"),
        ("genmesh_cache_usage_percent", "gauge", (), "base units"),
        ("genmesh_requests", "counter", (), "end in '_total'"),
        ("genmesh_running_total", "gauge", (), "end in '_total'"),
        ("genmesh_thing_count", "gauge", (), "series of its own"),
        ("genmesh_calls_total", "counter", ("request_id",), "one series per request"),
        ("genmesh_calls_total", "counter", ("api_key",), "one series per request or client"),
        ("genmesh_calls_total", "counter", ("le",), "not a usable label"),
        ("genmesh_calls_total", "counter", ("code", "code"), "given twice"),
    ],
)
def test_names_that_break_the_conventions_are_refused(name: str, kind: str, labels: tuple[str, ...], rule: str) -> None:
    with pytest.raises(ValueError, match=re.escape(rule)):
        check_name(name, kind, labels)  # type: ignore[arg-type]


def test_a_metric_is_defined_once_per_registry() -> None:
    metrics = Metrics(CollectorRegistry())
    first = metrics.counter("genmesh_things_total", "Things", ["kind"])
    assert metrics.counter("genmesh_things_total", "Things", ["kind"]) is first
    with pytest.raises(ValueError, match="already defined differently"):
        metrics.counter("genmesh_things_total", "Things", ["other"])
    metrics.gauge("genmesh_level", "Level")
    with pytest.raises(ValueError, match="already defined differently"):
        metrics.histogram("genmesh_level", "Level", LATENCY_BUCKETS)
    with pytest.raises(ValueError, match="buckets"):
        metrics.histogram("genmesh_wait_seconds", "Waits", (1.0, 0.5))
    assert RpcMetrics(metrics).started is RpcMetrics(metrics).started, "two servers of a process share the series"


def test_every_metric_is_documented() -> None:
    metrics = Metrics(CollectorRegistry())
    RpcMetrics(metrics)
    InferenceMetrics(metrics).attach(lambda: LoadStats(0, 0, 0, 1), EngineConfig())
    RetrievalMetrics(metrics).watch_store(Path("/nonexistent/retrieval.sqlite3"))  # the gauge, without samples
    ToolsMetrics(metrics, lambda name: True).watch_mcp([])
    GatewayMetrics(metrics)
    HttpMetrics(metrics)
    metrics.histogram("genmesh_unrelated_seconds", "Not documented: the check must see it", LATENCY_BUCKETS)
    defined = {family.name for family in metrics.registry.collect()} | set(GATEWAY_GAUGES)  # read from a loop
    defined |= {family.name for family in process_metrics().registry.collect() if family.name.startswith("genmesh_")}
    rows = re.findall(r"^\| `(genmesh_[a-z0-9_]+)`", DOCS.read_text(), re.MULTILINE)
    assert sorted(rows) == sorted(set(rows)), "each metric has one row"
    names, documented = {n.removesuffix("_total") for n in defined}, {d.removesuffix("_total") for d in rows}
    assert names - documented == {"genmesh_unrelated_seconds"}
    assert documented - names == set(), "every row names a metric the code defines"


def test_metrics_port_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    def parse(argv: list[str]) -> int:
        parser = argparse.ArgumentParser(exit_on_error=False)
        add_server_flags(parser, "inference", 50054)
        return int(parser.parse_args(argv).metrics_port)

    assert parse([]) == -1, "off unless asked for"
    assert parse(["--metrics-port", "0"]) == 0
    monkeypatch.setenv("GENMESH_INFERENCE_METRICS_PORT", "9464")
    assert parse([]) == 9464
    assert parse(["--metrics-port", "-1"]) == -1, "the flag wins"
    with pytest.raises(argparse.ArgumentError):
        parse(["--metrics-port", "-2"])


def test_up_gives_every_process_its_metrics_port() -> None:
    counts = {"inference": 2}
    layout = mesh.layout(counts)
    ports = {r.name: 6000 + i for i, r in enumerate(layout)}
    metrics_ports = {r.name: 7000 + i for i, r in enumerate(layout)}
    plan = plan_mesh("127.0.0.1", ports, counts, metrics_ports=metrics_ports)
    for launch in plan:
        port = metrics_ports[launch.replica.name]
        assert launch.args[launch.args.index("--metrics-port") + 1] == str(port)
        assert launch.metrics_url == f"http://127.0.0.1:{port}/metrics"
    assert all("--metrics-port" not in launch.args for launch in plan_mesh("127.0.0.1", ports, counts))
