"""The operator files agree with the code and with each other: the Prometheus configurations and alert rules pass
promtool (rules with their unit tests), every expression of the Grafana dashboard and of the alerts names only
metrics and labels the code defines, the dashboard shows the metric catalog and imports with a data source
variable, and docker-compose's services serve metrics where Prometheus looks for them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import promql

from gateway.jobs.model import JobState
from gateway.metrics import GatewayMetrics
from genmesh import mesh
from genmesh.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
#: What the dashboard must show (issue #14's catalog), as metric names.
CATALOG = {
    "genmesh_gateway_generated_tokens_total",
    "genmesh_gateway_time_to_first_token_seconds",
    "genmesh_gateway_stage_duration_seconds",
    "genmesh_gateway_degraded_total",
    "genmesh_gateway_circuit_state",
    "genmesh_gateway_upstream_up",
    "genmesh_gateway_replica_requests_running",
    "genmesh_gateway_replica_requests_waiting",
    "genmesh_gateway_replica_kv_cache_usage_ratio",
    "genmesh_gateway_jobs",
    "genmesh_gateway_jobs_finished_total",
    "genmesh_inference_generation_tokens_total",
    "genmesh_inference_time_to_first_token_seconds",
    "genmesh_inference_time_per_output_token_seconds",
    "genmesh_inference_e2e_request_latency_seconds",
    "genmesh_inference_num_requests_running",
    "genmesh_inference_num_requests_waiting",
    "genmesh_inference_kv_cache_usage_ratio",
    "genmesh_inference_decode_batch_size",
    "genmesh_rpc_handled_total",
    "genmesh_retrieval_query_duration_seconds",
    "genmesh_tools_calls_total",
}
#: Metrics the code defines that the dashboard leaves out on purpose (any other one must get a panel).
NOT_ON_DASHBOARD = {
    "genmesh_build_info": "a version label, not a quantity",
    "genmesh_rpc_started_total": "handled_total and in_flight say it",
    "genmesh_http_requests_started_total": "handled_total and in_flight say it",
    "genmesh_inference_request_prompt_tokens": "prompt sizes: the prompt tokens rate suffices",
    "genmesh_inference_request_generation_tokens": "answer sizes: the token rates suffice",
    "genmesh_inference_num_preemptions_total": "always 0",
}


@pytest.fixture(scope="module")
def known() -> dict[str, promql.Definition]:
    return promql.definitions()


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus; .ci/run installs it)")
    return found


def _promtool(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, check=False, timeout=120)


def test_promtool_passes_the_compose_configuration_and_the_alert_rules_with_their_unit_tests(promtool: str) -> None:
    for args in (
        ("check", "config", PROMETHEUS / "prometheus.yml"),
        ("check", "rules", PROMETHEUS / "alerts.yml"),
        ("test", "rules", PROMETHEUS / "alerts_test.yml"),
    ):
        result = _promtool(promtool, *args)
        assert result.returncode == 0, result.stdout + result.stderr
    alerts = {rule["alert"] for rule in promql.alerts()}
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert alerts <= tested, f"alerts no unit test sees firing: {alerts - tested}"


def test_the_kubernetes_configuration_scrapes_the_annotated_pods(promtool: str, tmp_path: Path) -> None:
    """Debian's promtool is built without Kubernetes service discovery: promtool checks the rest of
    prometheus-k8s.yml with a static target in its place; the discovery and the annotations it reads are checked
    here against the pods of deploy/k8s/base."""
    config = yaml.safe_load((PROMETHEUS / "prometheus-k8s.yml").read_text())
    [job] = config["scrape_configs"]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod", "namespaces": {"names": ["genmesh"]}}]
    job["static_configs"] = [{"targets": ["127.0.0.1:9464"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path)
    result = _promtool(promtool, "check", "config", tmp_path / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr

    read = {label for rule in job["relabel_configs"] for label in rule.get("source_labels", [])}
    keep = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    assert [(r["source_labels"], r["regex"]) for r in keep] == [
        (["__meta_kubernetes_pod_annotation_prometheus_io_scrape"], "true")
    ]
    for path in (ROOT / "deploy" / "k8s" / "base").glob("*.yaml"):
        deployments = (o for o in yaml.safe_load_all(path.read_text()) if o and o["kind"] == "Deployment")
        for obj in deployments:
            annotations = obj["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/scrape"] == "true", path.name
            for name in annotations:
                meta = "__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)
                assert meta in read, f"{path.name}: {name} is read by no relabelling"


def test_every_expression_names_metrics_and_labels_the_code_defines(known: dict[str, promql.Definition]) -> None:
    found = promql.expressions()
    assert len(found) > 50
    assert {where: p for where, expr in found.items() if (p := promql.problems(expr, known))} == {}
    assert all(promql.metric_names(expr) for expr in found.values())


@pytest.mark.parametrize(
    "expr",
    [
        "rate(genmesh_gateway_generated_token_total[5m])",  # a letter missing
        "rate(genmesh_gateway_retries_total_bucket[5m])",  # a counter has no buckets
        'sum(genmesh_gateway_degraded_total{stag="inference"})',  # a label missing
        "sum by (upstream) (rate(genmesh_gateway_degraded_total[5m]))",  # the label is another metric's
        "histogram_quantile(0.99, sum by (le) (rate(genmesh_inference_time_to_first_token_second_bucket[5m])))",
    ],
)
def test_the_check_finds_a_misspelt_metric_or_label(known: dict[str, promql.Definition], expr: str) -> None:
    assert promql.problems(expr, known) != []


def test_the_dashboard_shows_the_catalog_and_every_metric_not_left_out_on_purpose(
    known: dict[str, promql.Definition],
) -> None:
    shown = {
        resolved[0]
        for p in promql.panels()
        for t in p["targets"]
        for name in promql.metric_names(t["expr"])
        if (resolved := promql.resolve(name, known))
    }
    assert CATALOG - shown == set()
    defined = {n for n, d in known.items() if d.kinds and n.startswith("genmesh_")}
    assert defined - shown - set(NOT_ON_DASHBOARD) == set(), "give these a panel, or say in NOT_ON_DASHBOARD why not"
    assert set(NOT_ON_DASHBOARD) <= defined - shown


def test_the_dashboard_imports_with_a_prometheus_datasource_variable() -> None:
    board = json.loads(promql.DASHBOARD.read_text())
    assert board["schemaVersion"] >= 36 and board["uid"] == "genmesh"
    [variable] = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    uid = "${" + variable["name"] + "}"
    panels = promql.panels()
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == uid and all(t["datasource"]["uid"] == uid for t in panel["targets"])
        assert panel["title"] and panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]) > 0, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {(grid["x"] + x, grid["y"] + y) for x in range(grid["w"]) for y in range(grid["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_a_failed_job_makes_the_series_the_jobs_alert_counts() -> None:
    metrics = Metrics()
    GatewayMetrics(metrics).job_finished(JobState.FAILED, 1.0)
    [rule] = [r for r in promql.alerts() if r["alert"] == "GenmeshJobsFailing"]
    [(name, matchers)] = promql.selectors(rule["expr"])
    wanted = {label: value for label, (op, value) in matchers.items() if op == "="}
    value = metrics.registry.get_sample_value(name, wanted)
    assert value == 1, f"no {name}{wanted} after a failed job"


def test_compose_serves_metrics_where_prometheus_looks_and_the_services_read_the_variables() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    [job] = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]
    [discovery] = job["dns_sd_configs"]
    names = [s.name for s in mesh.SERVICES] + ["http"]  # the four services and the HTTP front
    assert sorted(discovery["names"]) == sorted(names) == sorted(services)
    for name in names:
        port = services[name]["environment"][f"GENMESH_{name.upper()}_METRICS_PORT"]
        assert int(port) == discovery["port"], name
    assert {"source_labels": ["__meta_dns_name"], "target_label": "service"} in job["relabel_configs"]
    help_text = subprocess.run(
        [sys.executable, "-m", "genmesh.cli", "serve", "gateway", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"COLUMNS": "10000", "PATH": ""},
    ).stdout
    assert "[env GENMESH_GATEWAY_METRICS_PORT" in help_text and "GENMESH_OTLP_ENDPOINT" in help_text


def test_the_observability_overlay_wires_prometheus_grafana_and_jaeger() -> None:
    overlay = yaml.safe_load((ROOT / "docker-compose.observability.yml").read_text())["services"]
    for spec in mesh.SERVICES:
        assert overlay[spec.name]["environment"] == {"GENMESH_OTLP_ENDPOINT": "jaeger:4317"}, spec.name
    prometheus = overlay["prometheus"]
    mounts = {target: source for source, target, *_ in (v.split(":") for v in prometheus["volumes"])}
    config = next(arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file="))
    assert mounts[str(Path(config).parent)] == "./deploy/prometheus"
    grafana = {target: source for source, target, *_ in (v.split(":") for v in overlay["grafana"]["volumes"])}
    assert grafana["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    [provider] = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "genmesh.yml").read_text())["providers"]
    folder = Path(provider["options"]["path"])
    dashboards = [source for target, source in grafana.items() if Path(target).parent == folder]
    assert dashboards == ["./deploy/grafana/genmesh-dashboard.json"]
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "genmesh.yml").read_text())["datasources"]
    assert {(s["type"], s["url"]) for s in sources} == {
        ("prometheus", "http://prometheus:9090"),
        ("jaeger", "http://jaeger:16686"),
    }
    assert set(overlay) >= {"prometheus", "grafana", "jaeger"}
    # Grafana's admin/admin and Prometheus's API are for this host only
    published = [port for service in overlay.values() for port in service.get("ports", [])]
    assert len(published) == 3 and all(port.startswith("127.0.0.1:") for port in published), published
