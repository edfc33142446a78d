"""`genmesh certs DIR`: a development CA and a certificate per service, for TLS and mutual TLS inside the mesh.

Each service's certificate names every host it is reached at (localhost, 127.0.0.1, ::1, its name, its
docker-compose service, its Kubernetes Service DNS names) and carries both serverAuth and clientAuth, so the
same pair serves its port and authenticates it to its upstreams. ``client.pem`` is for the CLI and tests. Keys
are written 0600. For production, issue the same files from your own CA (cert-manager: docs/SECURITY.md).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from genmesh import mesh
from genmesh.tls import ClientTLS

ROOT = Path(__file__).resolve().parents[2]
CLIENT = "client"
DEFAULT_NAMESPACE = "genmesh"
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 3650
LEAF_DAYS = 825


@dataclass(frozen=True, slots=True)
class CertDir:
    """Where `genmesh certs` puts each file."""

    path: Path

    @property
    def ca(self) -> Path:
        return self.path / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.path / "ca-key.pem"

    def cert(self, name: str) -> Path:
        """The certificate of service ``name`` (or ``client``)."""
        return self.path / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.path / f"{name}-key.pem"

    def files(self) -> list[Path]:
        names = [*(s.name for s in mesh.SERVICES), CLIENT]
        return [self.ca, self.ca_key, *(f(n) for n in names for f in (self.cert, self.key))]

    def complete(self) -> bool:
        """Whether every file is there."""
        return all(path.exists() for path in self.files())

    def server_args(self, service: str) -> list[str]:
        """`genmesh serve SERVICE` flags: TLS with its certificate, client certificates required."""
        return [
            *("--tls-cert", str(self.cert(service)), "--tls-key", str(self.key(service))),
            *("--tls-ca", str(self.ca), "--tls-client-auth", "require"),
        ]

    def upstream_args(self, service: str) -> list[str]:
        """`genmesh serve SERVICE` flags: mutual TLS to its upstreams with its own certificate."""
        if service not in mesh.UPSTREAMS:
            return []
        return [
            *("--upstream-tls-ca", str(self.ca)),
            *("--upstream-tls-cert", str(self.cert(service)), "--upstream-tls-key", str(self.key(service))),
        ]

    def client(self, name: str = CLIENT) -> ClientTLS:
        """A client's TLS with the certificate ``name`` (the CLI's by default)."""
        return ClientTLS(self.ca, self.cert(name), self.key(name))


def compose_names(path: Path = ROOT / "docker-compose.yml") -> list[str]:
    """The services of docker-compose.yml (none when it is not there: an installed package)."""
    if not path.exists():
        return []
    import yaml  # a dev dependency: only a checkout has the file

    return list((yaml.safe_load(path.read_text()) or {}).get("services", {}))


def kubernetes_names(service: str, base: Path = ROOT / "deploy" / "k8s" / "base") -> list[str]:
    """The DNS names of the Kubernetes Services in front of ``service``'s pods, in the base's namespace (the
    service's own name in namespace genmesh when the manifests are not there)."""
    namespace, names = DEFAULT_NAMESPACE, [service]
    if base.exists():
        import yaml  # a dev dependency: only a checkout has the manifests

        namespace = (yaml.safe_load((base / "kustomization.yaml").read_text()) or {}).get("namespace", namespace)
        names = []
        for manifest in sorted(base.glob("*.yaml")):
            for obj in yaml.safe_load_all(manifest.read_text()):
                selector = (obj or {}).get("spec", {}).get("selector") or {}
                if obj.get("kind") == "Service" and selector.get("app.kubernetes.io/name") == service:
                    names.append(obj["metadata"]["name"])
    return [
        dns for name in names for dns in (name, f"{name}.{namespace}", f"{name}.{namespace}.svc",
                                          f"{name}.{namespace}.svc.cluster.local")
    ]  # fmt: skip


def service_hosts(service: str, extra: Iterable[str] = ()) -> list[str]:
    """Every name and address a certificate of ``service`` must carry, each once."""
    compose = [service] if service in compose_names() else []
    return list(dict.fromkeys([*LOCAL_HOSTS, service, *compose, *kubernetes_names(service), *extra]))


def _alt_names(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "genmesh development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])  # fmt: skip


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    name = _name(f"genmesh development CA {secrets.token_hex(4)}")  # tells one CA from another
    cert = (
        _builder(name, name, key, CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    common_name: str,
    hosts: Sequence[str],
    usages: Sequence[x509.ObjectIdentifier],
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = _new_key()
    cert = (
        _builder(_name(common_name), ca_cert.subject, key, LEAF_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(_alt_names(hosts), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a new file made with ``mode`` (never briefly world-readable), then move it in place."""
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(partial, mode)  # whatever the umask
    partial.replace(path)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def create_certs(directory: Path, force: bool = False, extra_hosts: Iterable[str] = ()) -> CertDir:
    """Write a new CA and a certificate per service and for the client into ``directory``. FileExistsError when
    a file is already there, unless ``force``."""
    target = CertDir(directory)
    existing = [path for path in target.files() if path.exists()]
    if existing and not force:
        raise FileExistsError(f"{existing[0]} exists; use --force to replace the certificates in {directory}")
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca()
    both = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
    leaves = {s.name: _leaf(f"genmesh {s.name}", service_hosts(s.name, extra_hosts), both, ca) for s in mesh.SERVICES}
    leaves[CLIENT] = _leaf("genmesh client", [CLIENT], (ExtendedKeyUsageOID.CLIENT_AUTH,), ca)
    _write(target.ca_key, _key_pem(ca[1]), 0o600)
    for name, (cert, key) in leaves.items():
        _write(target.key(name), _key_pem(key), 0o600)
        _write(target.cert(name), _pem(cert), 0o644)
    _write(target.ca, _pem(ca[0]), 0o644)  # last: its presence means the set is complete
    return target


def ensure_certs(directory: Path) -> CertDir:
    """The certificates in ``directory``, created when none are there. FileNotFoundError when only some are."""
    target = CertDir(directory)
    if not any(path.exists() for path in target.files()):
        return create_certs(directory)
    missing = [path for path in target.files() if not path.exists()]
    if missing:
        raise FileNotFoundError(f"{directory} holds an incomplete set of certificates ({missing[0].name} is missing)")
    return target


def add_certs_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `genmesh certs DIR [--force] [--host NAME]`."""
    certs = commands.add_parser("certs", help="write a development CA and a TLS certificate per service into DIR")
    certs.add_argument("dir", type=Path)
    certs.add_argument("--force", action="store_true", help="replace certificates already in DIR")
    certs.add_argument(
        "--host", action="append", default=[], help="another name or address the services are reached at (repeat)"
    )


def run_certs(args: argparse.Namespace) -> int | str:
    """Run `genmesh certs`; 0, or an error message."""
    bad = [host for host in args.host if not re.fullmatch(r"[A-Za-z0-9.*:_-]+", host)]
    if bad:
        return f"--host {bad[0]!r} is not a host name or address"
    try:
        target = create_certs(args.dir, args.force, args.host)
    except FileExistsError as error:
        return str(error)
    print(f"CA {target.ca} (keep {target.ca_key} private)")
    for spec in mesh.SERVICES:
        print(f"  {spec.name:<10} {target.cert(spec.name)}  {target.key(spec.name)}")
    print(f"  {CLIENT:<10} {target.cert(CLIENT)}  {target.key(CLIENT)}")
    return 0
