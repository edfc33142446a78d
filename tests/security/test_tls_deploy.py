"""docker-compose.tls.yml turns on TLS for the stack of docker-compose.yml: each service gets the certificate
`genmesh certs` writes for it, through variables the service (or `genmesh health`, its health check) reads."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from genmesh import mesh
from genmesh.cli.certs import CertDir

ROOT = Path(__file__).resolve().parents[2]
MOUNT = "/etc/genmesh/tls"


def _variables(*command: str) -> set[str]:
    """The environment variables a `genmesh` command reads, as its --help lists them."""
    result = subprocess.run(
        [sys.executable, "-m", "genmesh.cli", *command, "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "10000", "PATH": ""},
    )
    return set(re.findall(r"\[env (GENMESH_[A-Z0-9_]+)", result.stdout))


@pytest.fixture(scope="module")
def override() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.tls.yml").read_text())["services"]
    return services


def test_every_service_serves_its_own_certificate_and_requires_clients_inside(override: dict[str, Any]) -> None:
    layout = CertDir(Path(MOUNT))
    health = _variables("health", "127.0.0.1:1")
    assert set(override) == {s.name for s in mesh.SERVICES} | {"http"}
    for spec in mesh.SERVICES:
        service = override[spec.name]
        env: dict[str, str] = service["environment"]
        prefix = f"GENMESH_{spec.name.upper()}"
        assert set(env) <= _variables("serve", spec.name) | health, spec.name
        own = [str(layout.cert(spec.name)), str(layout.key(spec.name)), str(layout.ca)]
        assert [env[f"{prefix}_TLS_{f}"] for f in ("CERT", "KEY", "CA")] == own
        assert [env[f"GENMESH_TLS_{f}"] for f in ("CERT", "KEY", "CA")] == own  # its health check
        assert env[f"{prefix}_TLS_CLIENT_AUTH"] == ("none" if spec is mesh.GATEWAY else "require")
        if spec.name in mesh.UPSTREAMS:
            assert [env[f"{prefix}_UPSTREAM_TLS_{f}"] for f in ("CERT", "KEY", "CA")] == own
        # Only the CA certificate and the service's own pair: never the CA's key nor another service's key.
        mounts = [v.rsplit(":", 2) for v in service["volumes"] if v.endswith(":ro")]
        mounted = {target: source for source, target, _ in mounts}
        assert mounted == {path: path.replace(MOUNT, "${GENMESH_CERTS:-./.genmesh/certs}") for path in own}, spec.name


def test_the_http_front_trusts_the_gateway_by_the_ca_alone(override: dict[str, Any]) -> None:
    front = override["http"]
    assert front["environment"] == {"GENMESH_HTTP_UPSTREAM_TLS_CA": f"{MOUNT}/ca.pem", "GENMESH_HTTP_TOOLS": ""}
    assert front["volumes"] == [f"${{GENMESH_CERTS:-./.genmesh/certs}}/ca.pem:{MOUNT}/ca.pem:ro"]  # no key at all
    assert set(front["environment"]) <= _variables("serve", "http")  # variables `genmesh serve http` reads
