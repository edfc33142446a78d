"""TLS for the mesh: server credentials that reload their files on SIGHUP or when they change, client credentials.

A server's certificate, key and client CA are re-read when a new connection is being set up (gRPC asks the
fetcher before each handshake) if the files changed on disk (modification time, size or inode: an atomic
rename and a Kubernetes Secret update both count) or a SIGHUP asked for it. Connections already open keep the
certificates they were made with, so open streams are never dropped. Files that cannot be read, do not parse
or whose key does not match the certificate (a rotation half done) leave the previous certificates in use; the
next handshake tries again.

Client authentication (``--tls-client-auth``): ``require`` asks every client for a certificate and refuses the
connection unless one signed by ``--tls-ca`` is presented; ``none`` asks for none. ``request`` (ask, verify if
presented, do not require) is not exposed by grpcio's Python API (only "don't request" and "require and
verify"), so it behaves exactly as ``none``; nothing in genmesh grants anything to a client certificate beyond
the connection itself, so no permission depends on the difference. A warning at start-up says so.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from genmesh.targets import TargetSpec

log = logging.getLogger("genmesh.tls")


class ClientAuth(enum.StrEnum):
    """Whether a TLS server asks its clients for a certificate."""

    NONE = "none"
    REQUEST = "request"
    REQUIRE = "require"


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """A server's certificate chain and key (PEM files), the CA its clients' certificates must chain to, and
    whether clients must present one."""

    cert: Path
    key: Path
    ca: Path | None = None
    client_auth: ClientAuth = ClientAuth.NONE

    def __post_init__(self) -> None:
        if self.client_auth is ClientAuth.REQUIRE and self.ca is None:
            raise ValueError("--tls-client-auth require needs --tls-ca: the CA that signs the clients' certificates")

    @classmethod
    def from_flags(cls, cert: str, key: str, ca: str, client_auth: str) -> ServerTLS | None:
        """The configuration given by ``--tls-cert/--tls-key/--tls-ca/--tls-client-auth``; None without a
        certificate (plaintext). ValueError names the flag that is missing."""
        auth = ClientAuth(client_auth or ClientAuth.NONE)
        if not cert and not key:
            if ca or auth is not ClientAuth.NONE:
                raise ValueError("--tls-ca and --tls-client-auth need --tls-cert and --tls-key")
            return None
        if not cert or not key:
            raise ValueError(
                f"--tls-cert and --tls-key go together: {'--tls-key' if cert else '--tls-cert'} is missing"
            )
        return cls(Path(cert), Path(key), Path(ca) if ca else None, auth)

    def files(self) -> tuple[Path, ...]:
        """The files whose change triggers a reload."""
        return (self.cert, self.key) if self.ca is None else (self.cert, self.key, self.ca)


def _signature(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...]:
    """What changes when a file is rewritten or replaced (a missing file reads as zeros)."""
    stats = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            stats.append((0, 0, 0))
            continue
        stats.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(stats)


@dataclass(frozen=True, slots=True)
class ServerMaterial:
    """One consistent read of a ServerTLS's files."""

    cert_chain: bytes
    key: bytes
    ca: bytes | None
    leaf: x509.Certificate

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(self.key, self.cert_chain)], self.ca)

    def describe(self) -> dict[str, str]:
        """The leaf certificate, for log lines."""
        return {
            "subject": self.leaf.subject.rfc4514_string(),
            "serial": format(self.leaf.serial_number, "x"),
            "not_after": self.leaf.not_valid_after_utc.isoformat(),
        }


def load_server_material(tls: ServerTLS) -> ServerMaterial:
    """Read and check the files: PEM certificates, a key that belongs to the first certificate, a CA that parses.
    ValueError names the file at fault."""
    cert_chain, key, ca = _read(tls.cert), _read(tls.key), _read(tls.ca) if tls.ca else None
    try:
        chain = x509.load_pem_x509_certificates(cert_chain)
    except ValueError as error:
        raise ValueError(f"{tls.cert}: not a PEM certificate chain ({error})") from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{tls.key}: not an unencrypted PEM private key ({error})") from None
    if private.public_key().public_bytes(*_SPKI) != chain[0].public_key().public_bytes(*_SPKI):
        raise ValueError(f"{tls.key} is not the key of the certificate in {tls.cert}")
    if ca is not None:
        try:
            x509.load_pem_x509_certificates(ca)
        except ValueError as error:
            raise ValueError(f"{tls.ca}: not a PEM CA certificate ({error})") from None
    return ServerMaterial(cert_chain, key, ca, chain[0])


_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None


class CertificateReloader:
    """The certificate_configuration_fetcher of a TLS server: a new configuration when the files changed or a
    reload was requested (SIGHUP), else None (keep the current one)."""

    def __init__(self, tls: ServerTLS) -> None:
        self.tls = tls
        self._lock = threading.Lock()
        self._requested = False
        self._signature = _signature(tls.files())
        self.material = load_server_material(tls)  # at start-up a bad file stops the service
        self.reloads = 0

    def request_reload(self) -> None:
        """Re-read the files before the next handshake (the SIGHUP handler)."""
        self._requested = True
        log.info("tls reload requested", extra={"cert": str(self.tls.cert)})

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that consult this reloader before each handshake."""
        return grpc.dynamic_ssl_server_credentials(
            self.material.configuration(),
            self,
            require_client_authentication=self.tls.client_auth is ClientAuth.REQUIRE,
        )

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:  # gRPC may call from several threads
            signature = _signature(self.tls.files())
            if not self._requested and signature == self._signature:
                return None
            try:
                material = load_server_material(self.tls)
            except ValueError as error:
                # Keep serving with the previous certificates; the next handshake tries again.
                log.warning("tls reload failed; keeping the previous certificates", extra={"error": str(error)})
                return None
            self._requested, self._signature, self.material = False, signature, material
            self.reloads += 1
            log.info("tls certificates reloaded", extra=material.describe())
            return material.configuration()


def server_credentials(tls: ServerTLS) -> tuple[grpc.ServerCredentials, CertificateReloader]:
    """Credentials for ``add_secure_port`` and the reloader to poke on SIGHUP; warns about ``request``."""
    reloader = CertificateReloader(tls)
    if tls.client_auth is ClientAuth.REQUEST:
        log.warning(
            "--tls-client-auth request behaves as none: grpcio cannot ask for an optional client certificate, so "
            "none is asked for or verified; use require to authenticate clients"
        )
    log.info("tls enabled", extra={"client_auth": tls.client_auth.value, **reloader.material.describe()})
    return reloader.credentials(), reloader


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the port on this machine (localhost, 127.0.0.0/8, ::1)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """A client's TLS: the CA it trusts (the system's roots when None), its own certificate and key for mutual
    TLS, and the name the server's certificate must carry when the channel target is an address."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str = ""

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate and its key go together: give both, or neither")

    @classmethod
    def from_flags(cls, ca: str = "", cert: str = "", key: str = "", enabled: bool = False) -> ClientTLS | None:
        """TLS when any file is given (or ``enabled``: the system's roots); None for plaintext."""
        if not (ca or cert or key or enabled):
            return None
        return cls(Path(ca) if ca else None, Path(cert) if cert else None, Path(key) if key else None)

    def for_server(self, name: str) -> ClientTLS:
        """The same, checking the server's certificate for ``name`` (empty: the channel target's host)."""
        return replace(self, server_name=name)

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials; the files are read now. ValueError names a file that cannot be read."""
        ca = _read(self.ca) if self.ca else None
        if self.cert is None or self.key is None:
            return grpc.ssl_channel_credentials(root_certificates=ca)
        return grpc.ssl_channel_credentials(ca, _read(self.key), _read(self.cert))

    def env(self) -> dict[str, str]:
        """The GENMESH_TLS_* variables that give `genmesh ask|jobs|health` this configuration."""
        pairs = {
            "GENMESH_TLS": "1",
            "GENMESH_TLS_CA": self.ca,
            "GENMESH_TLS_CERT": self.cert,
            "GENMESH_TLS_KEY": self.key,
        }
        return {name: str(value) for name, value in pairs.items() if value}


def server_name(spec: TargetSpec) -> str:
    """The host name the replicas of ``spec`` present in their certificates: the DNS name, or the one host of a
    list. ValueError for a list of several hosts, since one channel checks one name."""
    if spec.is_dns:
        return spec.dns_host
    hosts = {item.rpartition(":")[0].strip("[]") for item in spec.addresses}
    if len(hosts) != 1:
        raise ValueError(
            f"target {spec.text!r}: with TLS, the replicas of a list must share one host name (their certificates' "
            "name); use dns:///name:port for replicas on several hosts"
        )
    return hosts.pop()
