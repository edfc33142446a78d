"""deploy/k8s/overlays/tls: mutual TLS on every hop from each service's own Secret, probes that speak TLS, and the
Secrets documented as the user's; each promise is shown to catch a one-line mutation of the overlay."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from support.k8s import K8S, Obj, genmesh_containers, service_env, validator, workload
from test_k8s_manifests import probe_problems, validator_problems

from genmesh import mesh

OVERLAY = K8S / "overlays" / "tls"


def tls_problems(objs: list[Obj]) -> list[str]:
    """Every service serves TLS with the files of its own Secret genmesh-tls-<name>; retrieval, tools and inference
    require client certificates; the gateway and tools present their certificate to their upstreams."""
    problems = []
    for name, container in genmesh_containers(objs).items():
        pod = workload(objs, name)["spec"]["template"]["spec"]
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        files = {flag: service_env(container, name, flag) or "" for flag in ("TLS_CERT", "TLS_KEY", "TLS_CA")}
        for flag, path in files.items():
            if secrets.get(mounts.get(path.rpartition("/")[0], "")) != f"genmesh-tls-{name}":
                problems.append(f"{name}: {flag}={path!r} is no file of Secret genmesh-tls-{name}")
        auth = service_env(container, name, "TLS_CLIENT_AUTH")
        if auth != ("none" if name == "gateway" else "require"):
            problems.append(f"{name}: client auth {auth}")
        if name in mesh.UPSTREAMS:
            upstream = [service_env(container, name, f"UPSTREAM_{flag}") for flag in files]
            if upstream != list(files.values()):
                problems.append(f"{name}: presents {upstream} to its upstreams, not its own {list(files.values())}")
    return problems


def test_the_overlay_turns_on_mutual_tls_on_every_hop_and_the_base_does_not(kubectl: str) -> None:
    assert tls_problems(validator.render(OVERLAY, kubectl)) == []
    assert len(tls_problems(validator.render(K8S / "base", kubectl))) == 4 * 3 + 4 + 2


# One-line mutations of overlays/tls/tls-patches.yaml: (text with the line to change, its replacement, the
# promise that must catch it).
MUTATIONS: list[tuple[str, str, Callable[[list[Obj]], list[str]]]] = [
    ('- "127.0.0.1:50053"', '- "127.0.0.1:50052"', probe_problems),
    ("INFERENCE_TLS_CLIENT_AUTH\n              value: require",
     "INFERENCE_TLS_CLIENT_AUTH\n              value: request", tls_problems),
    ("secretName: genmesh-tls-retrieval", "secretName: genmesh-tls-tools", tls_problems),
    ("GATEWAY_UPSTREAM_TLS_CERT\n              value: /etc/genmesh/tls/tls.crt",
     "GATEWAY_UPSTREAM_TLS_CERT\n              value: /etc/genmesh/tls/client.crt", tls_problems),
    ("secretName: genmesh-tls-inference", "secretName: genmesh-tls", validator_problems),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "promise"), MUTATIONS, ids=[f"{m[2].__name__}:{m[1][-30:]}" for m in MUTATIONS])
def test_each_promise_catches_a_one_line_mutation(
    kubectl: str, tmp_path: Path, old: str, new: str, promise: Callable[[list[Obj]], list[str]]
) -> None:
    patches = OVERLAY / "tls-patches.yaml"
    original = patches.read_text()
    assert original.count(old) == 1, f"{old!r} must occur once"
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    (copy / "overlays" / "tls" / "tls-patches.yaml").write_text(original.replace(old, new))
    assert promise(validator.render(OVERLAY, kubectl)) == []
    assert promise(validator.render(copy / "overlays" / "tls", kubectl)) != []
