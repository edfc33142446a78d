"""Where the replicas of an upstream are: a comma-separated list of ``host:port``, or ``dns:///name:port``.

A ``dns:///`` target is re-resolved while the gateway runs (a Kubernetes headless Service answers with one
address per ready pod), so replicas that join or leave are followed. A list is fixed; a host name in it is
resolved once, at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

DNS_SCHEME = "dns:///"


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """A parsed ``--*-target`` value."""

    text: str
    addresses: tuple[str, ...] = ()
    """The fixed ``host:port`` list (empty for a DNS target)."""
    dns_host: str = ""
    dns_port: int = 0

    @property
    def is_dns(self) -> bool:
        return bool(self.dns_host)


def _split_host_port(item: str, text: str) -> tuple[str, int]:
    host, sep, port = item.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"target {text!r}: {item!r} is not host:port")
    return host, int(port)


def parse_target(text: str) -> TargetSpec:
    """Parse ``host:port[,host:port...]`` or ``dns:///name:port``; ValueError names what is wrong."""
    text = text.strip()
    if text.startswith(DNS_SCHEME):
        host, port = _split_host_port(text.removeprefix(DNS_SCHEME), text)
        return TargetSpec(text, dns_host=host, dns_port=port)
    items = [item.strip() for item in text.split(",")]
    if not text or any(not item for item in items):
        raise ValueError(f"target {text!r}: expected host:port[,host:port...] or dns:///name:port")
    for item in items:
        _split_host_port(item, text)
    if len(set(items)) != len(items):
        raise ValueError(f"target {text!r} names a replica twice")
    return TargetSpec(text, addresses=tuple(items))


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _entries(spec: TargetSpec) -> list[tuple[str, str, int, bool]]:
    """Each address of a fixed list as (item, host, port, whether the host is an IP address)."""
    entries = []
    for item in spec.addresses:
        host, port = _split_host_port(item, spec.text)
        entries.append((item, host, port, _literal(host)))
    return entries


def literal_addresses(spec: TargetSpec) -> list[str]:
    """The target's addresses when they need no lookup (a fixed list of IP addresses); else none."""
    entries = _entries(spec)
    if spec.is_dns or not all(literal for *_, literal in entries):
        return []
    return list(spec.addresses)


def _addresses(infos: list[Any], port: int) -> list[str]:
    """The ``ip:port`` addresses of getaddrinfo's answer, sorted, each once."""
    ips = {str(info[4][0]) for info in infos}
    return sorted(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in ips)


async def _lookup(host: str, port: int) -> list[str]:
    return _addresses(await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM), port)


def channel_target(spec: TargetSpec) -> str:
    """A gRPC channel target for round_robin over every replica: a DNS target or a single address as given
    (gRPC resolves and re-resolves them), several addresses as an ``ipv4:``/``ipv6:`` list, host names in it
    resolved now. ValueError when a name in a list does not resolve."""
    if spec.is_dns or len(spec.addresses) == 1:
        return spec.text
    found: list[str] = []
    for item, host, port, literal in _entries(spec):
        if literal:
            found.append(item)
            continue
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as error:
            raise ValueError(f"target {spec.text!r}: cannot resolve {host!r} ({error}); use dns:///name:port") from None
        found.extend(_addresses(infos, port))
    family = "ipv6" if any(a.startswith("[") for a in found) else "ipv4"
    return f"{family}:{','.join(dict.fromkeys(found))}"


async def resolve(spec: TargetSpec) -> list[str]:
    """Every ``ip:port`` the target stands for now (sorted); a name that does not resolve gives none."""
    if spec.is_dns:
        try:
            return await _lookup(spec.dns_host, spec.dns_port)
        except OSError:
            return []
    found: list[str] = []
    for item, host, port, literal in _entries(spec):
        if literal:
            found.append(item)
            continue
        with contextlib.suppress(OSError):
            found.extend(await _lookup(host, port))
    return sorted(set(found))
