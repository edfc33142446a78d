"""deploy/k8s renders and validates offline (scripts/validate_k8s.py) and keeps what users rely on: gRPC probes on
the services' ports, a drain that fits the termination grace, headless upstreams the gateway reaches by dns:///,
a GPU for inference in overlays/gpu, metrics that Prometheus finds and reaches. Each promise is shown to catch a
one-line mutation of the manifests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support.k8s import (
    K8S,
    ROOT,
    SCRIPT,
    Obj,
    genmesh_containers,
    service_env,
    validator,
    workload,
)

from genmesh import mesh

UPSTREAMS = (mesh.RETRIEVAL, mesh.TOOLS, mesh.INFERENCE)


# The promises: each returns what is wrong (nothing when kept).


def _checks_health(probe: Obj, container: Obj, service: str, port: int) -> bool:
    """A gRPC probe on ``port``; or, for a service serving TLS (the kubelet's gRPC probe speaks none),
    `genmesh health 127.0.0.1:<port>` presenting the service's own certificate and trusting its CA."""
    if probe.get("grpc", {}).get("port") == port:
        return True
    files = [service_env(container, service, f"TLS_{name}") for name in ("CA", "CERT", "KEY")]
    flags = [arg for pair in zip(("--tls-ca", "--tls-cert", "--tls-key"), files, strict=True) for arg in pair]
    command = probe.get("exec", {}).get("command", [])
    return None not in files and command[:3] == ["genmesh", "health", f"127.0.0.1:{port}"] and _has(command, flags)


def _has(command: list[str], pairs: list[str | None]) -> bool:
    """Whether each flag of ``pairs`` (flag, value, flag, value...) is in ``command`` with its value."""
    return all(
        flag in command[:-1] and command[command.index(flag) + 1] == value
        for flag, value in zip(pairs[::2], pairs[1::2], strict=True)
    )


def probe_problems(objs: list[Obj]) -> list[str]:
    """Readiness and liveness (and startup for retrieval and inference) check the gRPC health of the service's
    port (``_checks_health``)."""
    problems = []
    containers = genmesh_containers(objs)
    for spec in mesh.SERVICES:
        container = containers.get(spec.name)
        if container is None:
            problems.append(f"no container runs genmesh serve {spec.name}")
            continue
        ports = {p["containerPort"] for p in container["ports"]}
        if spec.default_port not in ports or service_env(container, spec.name, "PORT") != str(spec.default_port):
            problems.append(f"{spec.name}: does not listen on {spec.default_port}")
        probes = ["readinessProbe", "livenessProbe"]
        probes += ["startupProbe"] if spec in (mesh.RETRIEVAL, mesh.INFERENCE) else []
        for probe in probes:
            if not _checks_health(container.get(probe, {}), container, spec.name, spec.default_port):
                problems.append(f"{spec.name}: {probe} checks no gRPC health on {spec.default_port}")
    return problems


def drain_problems(objs: list[Obj]) -> list[str]:
    """Every service drains (drain delay > 0) and its pod may take longer than drain delay + grace to stop."""
    problems = []
    for name, container in genmesh_containers(objs).items():
        drain, grace = service_env(container, name, "DRAIN_DELAY"), service_env(container, name, "GRACE")
        if drain is None or grace is None or float(drain) <= 0:
            problems.append(f"{name}: drain delay {drain} and grace {grace} must both be set, the delay above 0")
            continue
        budget = workload(objs, name)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        if not budget > float(drain) + float(grace):
            problems.append(f"{name}: terminationGracePeriodSeconds {budget} <= drain {drain} + grace {grace}")
    return problems


def service_problems(objs: list[Obj]) -> list[str]:
    """The upstreams' Services are headless; the gateway's is a ClusterIP with port 50051 named grpc."""
    services = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "Service"}
    problems = [f"Service {s.name} is not headless" for s in UPSTREAMS if services[s.name].get("clusterIP") != "None"]
    gateway = services["gateway"]
    if gateway.get("clusterIP") == "None" or gateway.get("type", "ClusterIP") != "ClusterIP":
        problems.append("Service gateway is not a plain ClusterIP")
    if {"name": "grpc", "port": 50051} not in [{k: p.get(k) for k in ("name", "port")} for p in gateway["ports"]]:
        problems.append("Service gateway has no port 50051 named grpc")
    return problems


def target_problems(objs: list[Obj]) -> list[str]:
    """The gateway reaches each upstream as dns:///<its Service>:<port>."""
    services = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "Service"}
    gateway = genmesh_containers(objs)["gateway"]
    problems = []
    for spec in UPSTREAMS:
        target = service_env(gateway, "gateway", f"{spec.name.upper()}_TARGET")
        ports = [p["port"] for p in services.get(spec.name, {}).get("ports", [])]
        if target != f"dns:///{spec.name}:{spec.default_port}" or spec.default_port not in ports:
            problems.append(f"gateway's {spec.name} target is {target}, Service ports {ports}")
    return problems


def gpu_problems(objs: list[Obj]) -> list[str]:
    """Inference asks for one NVIDIA GPU, runs on cuda, and may land on a GPU node (toleration)."""
    deployment = workload(objs, "inference")
    container = genmesh_containers(objs)["inference"]
    problems = []
    if str(container["resources"].get("limits", {}).get("nvidia.com/gpu")) != "1":
        problems.append("inference has no nvidia.com/gpu: 1 limit")
    if service_env(container, "inference", "DEVICE") != "cuda":
        problems.append("inference does not run on cuda")
    tolerations = deployment["spec"]["template"]["spec"].get("tolerations", [])
    if not any(t.get("key") == "nvidia.com/gpu" for t in tolerations):
        problems.append("inference does not tolerate the nvidia.com/gpu taint")
    return problems


def security_problems(objs: list[Obj]) -> list[str]:
    """The services run as the image's uid 10001, non-root, on a read-only root filesystem."""
    problems = []
    for name, container in genmesh_containers(objs).items():
        pod = workload(objs, name)["spec"]["template"]["spec"].get("securityContext", {})
        if pod.get("runAsNonRoot") is not True or pod.get("runAsUser") != 10001:
            problems.append(f"{name}: not runAsNonRoot as uid 10001")
        if container.get("securityContext", {}).get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: root filesystem is writable")
    return problems


def metrics_problems(objs: list[Obj]) -> list[str]:
    """Every service, and the HTTP front, serves /metrics on a container port named metrics, which Prometheus finds
    both ways: the pod's prometheus.io annotations (deploy/prometheus/prometheus-k8s.yml) and a port named metrics on
    its Service (deploy/k8s/monitoring's ServiceMonitor); each NetworkPolicy guarding the pod lets another
    namespace's pods (Prometheus's) in on that port."""
    services = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "Service"}
    policies = [o["spec"] for o in objs if o["kind"] == "NetworkPolicy"]
    problems = []
    front = {name: c for _, c in validator.containers(objs) if (name := validator.serve_target(c)) == "http"}
    for name, container in (genmesh_containers(objs) | front).items():
        port = service_env(container, name, "METRICS_PORT")
        if port is None or int(port) <= 0:
            problems.append(f"{name}: serves no metrics (METRICS_PORT {port})")
            continue
        if {"name": "metrics", "containerPort": int(port)} not in container["ports"]:
            problems.append(f"{name}: no container port named metrics on {port}")
        wanted = {"prometheus.io/scrape": "true", "prometheus.io/port": port, "prometheus.io/path": "/metrics"}
        annotations = workload(objs, name)["spec"]["template"]["metadata"].get("annotations", {})
        if wanted.items() - annotations.items():
            problems.append(f"{name}: pod annotations {annotations} do not point Prometheus at {port}/metrics")
        if not any(p["name"] == "metrics" and p["targetPort"] == "metrics" for p in services[name]["ports"]):
            problems.append(f"Service {name} has no port named metrics")
        for policy in policies:
            if policy["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") != name:
                continue
            rules = [r for r in policy.get("ingress", []) if any("namespaceSelector" in p for p in r.get("from", []))]
            if not any({"port": "metrics"} in r.get("ports", []) for r in rules):
                problems.append(f"NetworkPolicy {name} keeps Prometheus off the metrics port")
    return problems


def validator_problems(objs: list[Obj]) -> list[str]:
    """What scripts/validate_k8s.py finds: schemas and cross-references (not the --help check)."""
    problems: list[str] = validator.check(objs).problems
    return problems


_FLAG_VARIABLES: dict[str, set[str] | str] = {}


def unread_variable_problems(objs: list[Obj]) -> list[str]:
    """GENMESH_* variables that no flag of the service reads (its --help, listed once per test session)."""
    report = validator.Report()
    validator.env_problems(objs, report, _FLAG_VARIABLES)
    problems: list[str] = report.problems
    return problems


COMMON = {
    "probes": probe_problems,
    "drain": drain_problems,
    "services": service_problems,
    "targets": target_problems,
    "security": security_problems,
    "metrics": metrics_problems,
}


def test_the_validation_script_passes() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(f"{path.relative_to(ROOT)}: " in result.stdout for path in validator.kustomizations())


@pytest.mark.parametrize("promise", list(COMMON))
def test_every_kustomization_keeps_the_promises(rendered: dict[str, list[Obj]], promise: str) -> None:
    assert set(rendered) >= {"base", "overlays/postgres", "overlays/gpu", "overlays/tls"}
    for name, objs in rendered.items():
        assert COMMON[promise](objs) == [], name


def test_only_the_gpu_overlay_asks_for_a_gpu(rendered: dict[str, list[Obj]]) -> None:
    assert gpu_problems(rendered["overlays/gpu"]) == []
    image = genmesh_containers(rendered["overlays/gpu"])["inference"]["image"]
    assert image == "genmesh/inference:0.1.0-cuda"
    assert len(gpu_problems(rendered["base"])) == 3


def test_the_base_reads_the_users_secret_and_the_postgres_overlay_makes_it(rendered: dict[str, list[Obj]]) -> None:
    def jobs_db(objs: list[Obj]) -> Obj:
        gateway = genmesh_containers(objs)["gateway"]
        ref: Obj = next(v for v in gateway["env"] if v["name"] == "GENMESH_GATEWAY_JOBS_DB")["valueFrom"][
            "secretKeyRef"
        ]
        return ref

    assert jobs_db(rendered["base"]) == {"name": "genmesh-jobs-db", "key": "url"}
    assert not any(o["kind"] == "Secret" for o in rendered["base"])
    assert workload(rendered["base"], "gateway")["spec"]["replicas"] >= 2
    ref = jobs_db(rendered["overlays/postgres"])
    secret = next(o for o in rendered["overlays/postgres"] if o["metadata"]["name"] == ref["name"])
    assert ref["name"].startswith("genmesh-jobs-db-") and secret["kind"] == "Secret"
    assert any(
        o["kind"] == "StatefulSet" and o["metadata"]["name"] == "postgres" for o in rendered["overlays/postgres"]
    )


def test_the_docs_combination_of_postgres_and_gpu_renders(kubectl: str, tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{os.path.relpath(K8S / 'overlays/postgres', tmp_path)}]\n"
        f"components: [{os.path.relpath(K8S / 'components/gpu', tmp_path)}]\n"
    )
    objs = validator.render(tmp_path, kubectl)
    assert gpu_problems(objs) == [] and validator_problems(objs) == []
    assert any(o["kind"] == "StatefulSet" for o in objs)


# The end of retrieval's metrics rule (the only one after a rule letting tools in).
_FROM_TOOLS = "name: tools\n      ports:\n        - port: grpc\n    - from:\n        - namespaceSelector:\n"
_FROM_TOOLS += (
    "            matchLabels:\n              kubernetes.io/metadata.name: monitoring\n      ports:\n        - port: "
)
# One-line mutations: (file under deploy/k8s, text with the line to change, its replacement, the kustomization to
# render, the promise that must catch it).
MUTATIONS: list[tuple[str, str, str, str, Callable[[list[Obj]], list[str]]]] = [
    (
        "base/gateway.yaml",
        "readinessProbe:\n            grpc:\n              port: 50051",
        "readinessProbe:\n            grpc:\n              port: 50052",
        "base",
        probe_problems,
    ),
    (
        "base/tools.yaml",
        "livenessProbe:\n            grpc:",
        "livenessProbe:\n            tcpSocket:",
        "base",
        probe_problems,
    ),
    (
        "base/inference.yaml",
        "startupProbe:\n            grpc:\n              port: 50054",
        "startupProbe:\n            grpc:\n              port: 50051",
        "base",
        probe_problems,
    ),
    ("base/retrieval.yaml", '"50052"', '"50053"', "base", probe_problems),
    (
        "base/inference.yaml",
        "terminationGracePeriodSeconds: 60",
        "terminationGracePeriodSeconds: 40",
        "base",
        drain_problems,
    ),
    (
        "base/gateway.yaml",
        'GRACE\n              value: "30"',
        'GRACE\n              value: "60"',
        "base",
        drain_problems,
    ),
    (
        "base/tools.yaml",
        'DRAIN_DELAY\n              value: "10"',
        'DRAIN_DELAY\n              value: "0"',
        "base",
        drain_problems,
    ),
    ("base/inference.yaml", "  clusterIP: None\n", "", "base", service_problems),
    (
        "base/gateway.yaml",
        "    - name: grpc\n      port: 50051",
        "    - name: http\n      port: 50051",
        "base",
        service_problems,
    ),
    ("base/gateway.yaml", "value: dns:///inference:50054", "value: inference:50054", "base", target_problems),
    ("base/gateway.yaml", "value: dns:///tools:50053", "value: dns:///tools:50052", "base", target_problems),
    ("components/gpu/inference-gpu.yaml", "              nvidia.com/gpu: 1\n", "", "overlays/gpu", gpu_problems),
    ("components/gpu/inference-gpu.yaml", "value: cuda", "value: cpu", "overlays/gpu", gpu_problems),
    ("base/retrieval.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "base", security_problems),
    ("base/gateway.yaml", "runAsUser: 10001", "runAsUser: 1000", "base", security_problems),
    (
        "base/gateway.yaml",
        "- name: GENMESH_GATEWAY_UPSTREAM_WAIT",
        "- name: GENMESH_GATEWAY_UPSTREAMS_WAIT",
        "base",
        unread_variable_problems,
    ),
    ("base/inference.yaml", 'prometheus.io/port: "9464"', 'prometheus.io/port: "9465"', "base", metrics_problems),
    ("base/gateway.yaml", 'value: "9464"', 'value: "-1"', "base", metrics_problems),
    ("base/http.yaml", 'prometheus.io/port: "9464"', 'prometheus.io/port: "9465"', "base", metrics_problems),
    ("base/retrieval.yaml", "targetPort: metrics", "targetPort: grpc", "base", metrics_problems),
    ("base/network-policies.yaml", f"{_FROM_TOOLS}metrics", f"{_FROM_TOOLS}grpc", "base", metrics_problems),
    # What only the validator catches: a misspelt field (strict schema), a selector that selects nothing, a probe
    # on a port the container does not have, a Secret without the key read, a target to a non-headless Service.
    (
        "base/tools.yaml",
        "periodSeconds: 5\n            failureThreshold: 24",
        "periodSecond: 5\n            failureThreshold: 24",
        "base",
        validator_problems,
    ),
    (
        "base/inference.yaml",
        "  maxUnavailable: 1\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: inference",
        "  maxUnavailable: 1\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: inferense",
        "base",
        validator_problems,
    ),
    (
        "base/retrieval.yaml",
        "livenessProbe:\n            grpc:\n              port: 50052",
        "livenessProbe:\n            grpc:\n              port: 50059",
        "base",
        validator_problems,
    ),
    (
        "overlays/postgres/kustomization.yaml",
        "- url=postgresql://",
        "- uri=postgresql://",
        "overlays/postgres",
        validator_problems,
    ),
    ("base/tools.yaml", "  clusterIP: None\n", "", "base", validator_problems),
]


@pytest.mark.parametrize(
    ("path", "old", "new", "kustomization", "promise"),
    MUTATIONS,
    ids=[f"{m[4].__name__}:{m[0]}:{m[1].splitlines()[-1].strip()}" for m in MUTATIONS],
)
def test_each_promise_catches_a_one_line_mutation(
    kubectl: str,
    tmp_path: Path,
    path: str,
    old: str,
    new: str,
    kustomization: str,
    promise: Callable[[list[Obj]], list[str]],
) -> None:
    original = (K8S / path).read_text()
    assert original.count(old) == 1, f"{old!r} must occur once in {path}"
    changed = original.replace(old, new)
    assert len(set(original.splitlines()) ^ set(changed.splitlines())) <= 2, "not a one-line mutation"
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    (copy / path).write_text(changed)
    assert promise(validator.render(K8S / kustomization, kubectl)) == []
    assert promise(validator.render(copy / kustomization, kubectl)) != []


def test_the_http_front_reaches_the_gateway_and_is_probed_over_http(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["base"]
    (container,) = [c for _, c in validator.containers(objs) if validator.serve_target(c) == "http"]
    services = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "Service"}
    gateway_host, gateway_port = str(validator.env_value(container, "GENMESH_HTTP_GATEWAY")).split(":")
    assert int(gateway_port) in {p["port"] for p in services[gateway_host]["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {"name": "http", "containerPort": 8080} in container["ports"]
    assert services["http"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http"},
        {"name": "metrics", "port": 9464, "targetPort": "metrics"},  # metrics_problems checks the rest
    ]
    tools = next(o["spec"] for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "tools")
    allowed = [p["podSelector"]["matchLabels"] for r in tools["ingress"] for p in r["from"] if "podSelector" in p]
    assert {"app.kubernetes.io/name": "http"} in allowed
