"""`genmesh certs DIR`: a CA and per-service certificates that name every host the service is reached at, serve
and authenticate (both EKUs), chain to the CA, and keep their keys 0600; an existing set is kept unless --force.
The TLS flags refuse half-given configurations with the flag named."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from genmesh import mesh
from genmesh.cli.certs import CertDir, compose_names
from genmesh.targets import parse_target
from genmesh.tls import ClientAuth, ClientTLS, ServerTLS, is_loopback, server_name

SERVER_AND_CLIENT = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def _certs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "genmesh.cli", "certs", *args], capture_output=True, text=True)


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _hosts(cert: x509.Certificate) -> set[str]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*names.get_values_for_type(x509.DNSName), *map(str, names.get_values_for_type(x509.IPAddress))}


def _usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_certs_name_every_host_and_serve_both_ends(tmp_path: Path) -> None:
    result = _certs(str(tmp_path), "--host", "genmesh.example.com")
    assert result.returncode == 0, result.stderr
    certs = CertDir(tmp_path)
    ca = _load(certs.ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # the compose file was read (its HTTP front is a client of the gateway: it needs the CA only, no certificate)
    assert set(compose_names()) == {s.name for s in mesh.SERVICES} | {"http"}
    for spec in mesh.SERVICES:
        cert = _load(certs.cert(spec.name))
        cert.verify_directly_issued_by(ca)
        k8s = f"{spec.name}.genmesh.svc.cluster.local"
        expected = {"localhost", "127.0.0.1", str(ipaddress.ip_address("::1")), spec.name, k8s, "genmesh.example.com"}
        assert expected <= _hosts(cert), spec.name
        assert _usages(cert) == SERVER_AND_CLIENT
    client = _load(certs.cert("client"))
    client.verify_directly_issued_by(ca)
    assert _usages(client) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    for path in certs.files():
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if path.name.endswith("-key.pem") else 0o644), (path.name, oct(mode))


def test_certs_are_never_replaced_without_force(tmp_path: Path) -> None:
    assert _certs(str(tmp_path)).returncode == 0
    first = CertDir(tmp_path).ca.read_bytes()
    refused = _certs(str(tmp_path))
    assert refused.returncode != 0 and "--force" in refused.stderr
    assert CertDir(tmp_path).ca.read_bytes() == first
    assert _certs(str(tmp_path), "--force").returncode == 0
    assert CertDir(tmp_path).ca.read_bytes() != first


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (("cert.pem", "", "", "none"), "--tls-key is missing"),
        (("", "key.pem", "", "none"), "--tls-cert is missing"),
        (("", "", "ca.pem", "none"), "need --tls-cert"),
        (("cert.pem", "key.pem", "", "require"), "needs --tls-ca"),
    ],
)
def test_half_given_server_tls_names_the_missing_flag(flags: tuple[str, str, str, str], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        ServerTLS.from_flags(*flags)


def test_server_tls_flags() -> None:
    assert ServerTLS.from_flags("", "", "", "none") is None
    tls = ServerTLS.from_flags("c.pem", "k.pem", "ca.pem", "require")
    assert tls is not None and tls.client_auth is ClientAuth.REQUIRE and tls.ca == Path("ca.pem")
    with pytest.raises(ValueError, match="go together"):
        ClientTLS.from_flags("ca.pem", "client.pem", "")
    assert ClientTLS.from_flags() is None and ClientTLS.from_flags(enabled=True) == ClientTLS()


def test_a_serve_flag_mistake_stops_start_up_with_the_file_named(tmp_path: Path) -> None:
    files = ["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(tmp_path / "missing-key.pem")]
    result = subprocess.run(
        [sys.executable, "-m", "genmesh.cli", "serve", "tools", "--port", "0", "--retrieval-target", "", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and f"cannot read {tmp_path / 'missing.pem'}" in result.stderr


def test_the_name_a_replicas_certificate_is_checked_for() -> None:
    assert server_name(parse_target("dns:///inference:50054")) == "inference"
    assert server_name(parse_target("inference:50054")) == "inference"
    assert server_name(parse_target("127.0.0.1:1,127.0.0.1:2")) == "127.0.0.1"
    with pytest.raises(ValueError, match="share one host name"):
        server_name(parse_target("a:1,b:2"))


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.3.0.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.2", False), ("gateway", False)],
)  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
