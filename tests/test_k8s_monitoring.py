"""deploy/k8s/monitoring, for the Prometheus Operator: its ServiceMonitor finds every genmesh Service's metrics
port in every kustomization, and its PrometheusRule carries exactly the alerts of deploy/prometheus/alerts.yml
(which promtool tests: tests/test_operator_files.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from support.k8s import K8S, ROOT, Obj, validator

from genmesh import mesh

MONITORING = K8S / "monitoring"


def _one(objs: list[Obj], kind: str) -> Obj:
    [found] = [o for o in objs if o["kind"] == kind]
    return found


def monitor_problems(monitoring: list[Obj], objs: list[Obj]) -> list[str]:
    """The ServiceMonitor, in the mesh's namespace, selects each genmesh Service of ``objs`` and scrapes /metrics
    at a port that Service has."""
    monitor = _one(monitoring, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    problems = []
    if monitor["metadata"].get("namespace") != "genmesh":
        problems.append(f"ServiceMonitor in namespace {monitor['metadata'].get('namespace')}, not genmesh")
    services = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Service"}
    for spec in mesh.SERVICES:
        service = services[spec.name]
        if selector.items() - service["metadata"].get("labels", {}).items():
            problems.append(f"ServiceMonitor selector {selector} misses Service {spec.name}")
        ports = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint["port"] not in ports or endpoint.get("path", "/metrics") != "/metrics":
                problems.append(f"ServiceMonitor endpoint {endpoint} is no metrics port of Service {spec.name}")
    return problems


def test_the_service_monitor_scrapes_every_service_in_every_kustomization(
    kubectl: str, rendered: dict[str, list[Obj]]
) -> None:
    monitoring = validator.render(MONITORING, kubectl)
    assert {o["kind"] for o in monitoring} == {"ServiceMonitor", "PrometheusRule"}
    assert all(o["apiVersion"] == "monitoring.coreos.com/v1" for o in monitoring)
    for name, objs in rendered.items():
        assert monitor_problems(monitoring, objs) == [], name


@pytest.mark.parametrize(
    ("old", "new"),
    [("- port: metrics", "- port: grpc-metrics"), ("part-of: genmesh", "part-of: genmesh-mesh")],
)
def test_the_service_monitor_check_catches_a_one_line_mutation(
    kubectl: str, rendered: dict[str, list[Obj]], tmp_path: Path, old: str, new: str
) -> None:
    copy = tmp_path / "monitoring"
    shutil.copytree(MONITORING, copy)
    path = copy / "service-monitor.yaml"
    assert path.read_text().count(old) == 1
    path.write_text(path.read_text().replace(old, new))
    assert monitor_problems(validator.render(copy, kubectl), rendered["base"]) != []


def test_the_prometheus_rule_is_alerts_yml(kubectl: str) -> None:
    rule = _one(validator.render(MONITORING, kubectl), "PrometheusRule")
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"] == alerts, "copy the groups of deploy/prometheus/alerts.yml into prometheus-rule.yaml"
    assert rule["metadata"]["namespace"] == "genmesh"
