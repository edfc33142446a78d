"""deploy/k8s for tests: scripts/validate_k8s.py loaded as a module, every kustomization rendered with kubectl's
kustomize, and what the genmesh containers of a rendering set."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from genmesh import mesh

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCRIPT = ROOT / "scripts" / "validate_k8s.py"

Obj = dict[str, Any]


def _load_validator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("validate_k8s", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


validator = sys.modules.get("validate_k8s") or _load_validator()


def kubectl_path() -> str:
    """kubectl (with its kustomize) is a dev tool that must be installed: missing, the test fails, not skips."""
    try:
        return str(validator.find_kubectl())
    except validator.ValidationFailed as error:
        pytest.fail(str(error))


def render_all(kubectl: str) -> dict[str, list[Obj]]:
    """Each kustomization's objects, by its path under deploy/k8s."""
    return {str(path.relative_to(K8S)): validator.render(path, kubectl) for path in validator.kustomizations()}


def genmesh_containers(objs: list[Obj]) -> dict[str, Obj]:
    """Service name → the container that runs `genmesh serve NAME`, for the mesh's gRPC services (the HTTP front,
    `genmesh serve http`, has checks of its own)."""
    return {name: c for _, c in validator.containers(objs) if (name := validator.serve_target(c)) in mesh.BY_NAME}


def workload(objs: list[Obj], name: str) -> Obj:
    """The Deployment called ``name``."""
    return next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == name)


def service_env(container: Obj, service: str, flag: str) -> str | None:
    """The literal value of GENMESH_<SERVICE>_<FLAG> in ``container``, or None."""
    value: str | None = validator.env_value(container, f"GENMESH_{service.upper()}_{flag}")
    return value
