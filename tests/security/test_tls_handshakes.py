"""A TLS service refuses what it must, quickly and without harm to itself: plaintext clients, clients that do
not trust its CA, and (client auth required) clients without a certificate or with one from another CA; the
right client gets through. A plaintext service bound beyond loopback says so at start-up."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from genmesh.cli.certs import CertDir, create_certs
from genmesh.cli.launcher import ServiceProcess
from genmesh.tls import ClientTLS
from security.tls_processes import health_as, start_tools, stop, tools_flags, wait_for_log

NON_LOOPBACK_WARNING = "listening without TLS on a non-loopback address"


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> CertDir:
    return create_certs(tmp_path_factory.mktemp("certs-ours"))


@pytest.fixture(scope="module")
def theirs(tmp_path_factory: pytest.TempPathFactory) -> CertDir:
    """Certificates from another CA."""
    return create_certs(tmp_path_factory.mktemp("certs-theirs"))


@pytest_asyncio.fixture(scope="module")
async def mtls_tools(ours: CertDir, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceProcess]:
    service = await start_tools(tmp_path_factory.mktemp("tls-logs"), tools_flags(ours, "require"), ours.client())
    yield service
    await stop(service)


async def test_a_plaintext_client_is_refused_at_once_and_the_server_keeps_serving(
    mtls_tools: ServiceProcess, ours: CertDir
) -> None:
    assert await health_as(mtls_tools.address, None) == "UNAVAILABLE"  # not DEADLINE_EXCEEDED: no hang
    assert await health_as(mtls_tools.address, ours.client()) == "SERVING"
    assert mtls_tools.process.returncode is None


async def test_client_auth_require_admits_only_certificates_of_its_ca(
    mtls_tools: ServiceProcess, ours: CertDir, theirs: CertDir
) -> None:
    no_certificate = ClientTLS(ours.ca)
    other_ca_certificate = ClientTLS(ours.ca, theirs.cert("client"), theirs.key("client"))
    assert await health_as(mtls_tools.address, no_certificate) == "UNAVAILABLE"
    assert await health_as(mtls_tools.address, other_ca_certificate) == "UNAVAILABLE"
    assert await health_as(mtls_tools.address, ours.client()) == "SERVING"


async def test_a_client_that_does_not_trust_the_servers_ca_gives_up(
    mtls_tools: ServiceProcess, ours: CertDir, theirs: CertDir
) -> None:
    assert await health_as(mtls_tools.address, ClientTLS(theirs.ca, ours.cert("client"), ours.key("client"))) == (
        "UNAVAILABLE"
    )


async def test_the_certificate_is_checked_for_the_server_name_the_client_expects(
    mtls_tools: ServiceProcess, ours: CertDir
) -> None:
    """A replica reached by IP address is checked for its service's name (``server_name``), not the address."""
    assert await health_as(mtls_tools.address, ours.client().for_server("tools")) == "SERVING"
    assert await health_as(mtls_tools.address, ours.client().for_server("inference")) == "UNAVAILABLE"


async def test_client_auth_none_admits_clients_without_a_certificate(ours: CertDir, tmp_path: Path) -> None:
    service = await start_tools(tmp_path, tools_flags(ours, "none"), ClientTLS(ours.ca))
    try:
        assert await health_as(service.address, ClientTLS(ours.ca)) == "SERVING"
        assert await health_as(service.address, None) == "UNAVAILABLE"
    finally:
        await stop(service)


async def test_a_plaintext_port_beyond_loopback_is_warned_about(ours: CertDir, tmp_path: Path) -> None:
    plain = await start_tools(tmp_path / "plain", [], None, host="0.0.0.0")
    secure = await start_tools(tmp_path / "secure", tools_flags(ours), ours.client(), host="0.0.0.0")
    try:
        warning = await wait_for_log(plain, NON_LOOPBACK_WARNING)
        assert "level=warning" in warning and "host=0.0.0.0" in warning
        await wait_for_log(secure, "msg=ready")
        assert NON_LOOPBACK_WARNING not in secure.log_tail(200)
    finally:
        await stop(plain)
        await stop(secure)


async def test_genmesh_health_takes_its_tls_from_flags_or_the_environment(
    mtls_tools: ServiceProcess, ours: CertDir
) -> None:
    files = {"GENMESH_TLS_CA": ours.ca, "GENMESH_TLS_CERT": ours.cert("client"), "GENMESH_TLS_KEY": ours.key("client")}
    flags = ["--tls-ca", str(ours.ca), "--tls-cert", str(ours.cert("client")), "--tls-key", str(ours.key("client"))]
    plain = {k: v for k, v in os.environ.items() if not k.startswith("GENMESH_TLS")}
    assert await _health_cli(mtls_tools.address, [], {**plain, **{k: str(v) for k, v in files.items()}}) == 0
    assert await _health_cli(mtls_tools.address, flags, plain) == 0
    assert await _health_cli(mtls_tools.address, [], plain) == 1  # UNREACHABLE: no TLS


async def _health_cli(address: str, flags: list[str], env: dict[str, str]) -> int:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "genmesh.cli", "health", address, "--timeout", "30", *flags, env=env
    )
    return await process.wait()
