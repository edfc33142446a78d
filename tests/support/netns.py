"""Several hosts on one machine: Linux network namespaces joined by a bridge, for tests across a real network path.

``Network`` makes a hub namespace holding a bridge, one namespace per host (its own ``10.x.y.n`` address on an
``eth0`` veth plugged into the bridge, loopback up) and one veth from the root namespace into the hub, so the
test process reaches every host at its address. The /24 is drawn at random in 10.200-250.x and the names carry
a random suffix, so parallel runs do not clash. Commands run inside a host with ``ip netns exec`` as asyncio
subprocesses logging to files. ``link_down`` cuts a host off the bridge without touching its processes.
``close`` (also on leaving ``async with``) kills what was spawned and removes every namespace and link made.

Needs root or CAP_NET_ADMIN and iproute2; ``NetnsUnavailable`` says so otherwise. Traffic goes only to the
namespaces made here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

CAP_NET_ADMIN = 12
STOP_WAIT_S = 5.0


class NetnsUnavailable(RuntimeError):
    """This process cannot make network namespaces (not root, no CAP_NET_ADMIN, or no iproute2)."""


def net_admin_missing() -> str:
    """What stops this process from making network namespaces; empty when nothing does."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (apt-get install iproute2)"
    effective = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            effective = int(line.split()[1], 16)
    if os.geteuid() != 0 and not effective >> CAP_NET_ADMIN & 1:
        return "these tests need root or CAP_NET_ADMIN to make network namespaces (CI runs as root)"
    return ""


def require_net_admin() -> None:
    """Raise NetnsUnavailable, saying what is missing, unless namespaces can be made here."""
    missing = net_admin_missing()
    if missing:
        raise NetnsUnavailable(missing)


def _ip(*args: str) -> str:
    """The output of ``ip ARGS``; RuntimeError with ip's message when it fails."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result.stdout


def _free_subnet() -> ipaddress.IPv4Network:
    """A random 10.200-250.x.0/24 that no route or address of the root namespace overlaps."""
    taken: list[ipaddress.IPv4Network] = []
    for word in (_ip("-4", "-o", "route") + _ip("-4", "-o", "addr")).split():
        with contextlib.suppress(ValueError):
            taken.append(ipaddress.IPv4Network(word, strict=False))
    for _ in range(100):
        subnet = ipaddress.IPv4Network(f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24")
        if not any(subnet.overlaps(other) for other in taken if other.prefixlen > 0):
            return subnet
    raise RuntimeError("no free /24 in 10.200.0.0-10.250.255.0")


@dataclass(frozen=True, slots=True)
class Host:
    """One simulated host: its namespace, its address, and the bridge port it is plugged into."""

    name: str
    namespace: str
    address: str
    hub_link: str


@dataclass
class Network:
    """A bridge in a hub namespace, hosts plugged into it, and a veth from the root namespace (address ``.1``)."""

    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    hosts: dict[str, Host] = field(default_factory=dict)
    spawned: list[asyncio.subprocess.Process] = field(default_factory=list)
    subnet: ipaddress.IPv4Network | None = None
    _namespaces: list[str] = field(default_factory=list)
    _root_link: str = ""

    @property
    def hub(self) -> str:
        return f"gm-{self.suffix}-hub"

    def open(self) -> None:
        """Make the hub namespace with its bridge, and the root namespace's veth into it."""
        require_net_admin()
        self.subnet = _free_subnet()
        self._add_namespace(self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        self._root_link = f"gm{self.suffix}r"
        _ip("link", "add", self._root_link, "type", "veth", "peer", "name", "root", "netns", self.hub)
        self._plug("root")
        _ip("addr", "add", f"{self.subnet.network_address + 1}/{self.subnet.prefixlen}", "dev", self._root_link)
        _ip("link", "set", self._root_link, "up")

    def add_host(self, name: str) -> Host:
        """A new host with the next free address (``.2``, ``.3``, ...), reachable from the root namespace."""
        if self.subnet is None:
            raise RuntimeError("open the network first")
        if not (name.isalnum() and len(name) <= 12) or name in self.hosts:
            raise ValueError(f"host name {name!r}: at most 12 letters or digits, unique")
        namespace = f"gm-{self.suffix}-{name}"
        address = str(self.subnet.network_address + 2 + len(self.hosts))
        hub_link = f"h-{name}"[:15]
        self._add_namespace(namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("link", "add", "eth0", "netns", namespace, "type", "veth", "peer", "name", hub_link, "netns", self.hub)
        self._plug(hub_link)
        _ip("-n", namespace, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        host = Host(name, namespace, address, hub_link)
        self.hosts[name] = host
        return host

    async def spawn(
        self, host: Host, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
    ) -> asyncio.subprocess.Process:
        """Start ``argv`` inside ``host`` in a session of its own, stdout and stderr appended to ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                "ip",
                *["netns", "exec", host.namespace, *argv],
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        self.spawned.append(process)
        return process

    async def link_down(self, host: Host) -> None:
        """Cut ``host`` off the bridge: packets to and from it vanish (no reset), its processes keep running."""
        await asyncio.to_thread(_ip, "-n", self.hub, "link", "set", host.hub_link, "down")

    async def link_up(self, host: Host) -> None:
        """Plug ``host`` back in."""
        await asyncio.to_thread(_ip, "-n", self.hub, "link", "set", host.hub_link, "up")

    async def close(self) -> None:
        """Kill every process spawned here, then delete the namespaces and the root veth (each step always runs)."""
        for process in self.spawned:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        for process in self.spawned:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), STOP_WAIT_S)
        for namespace in reversed(self._namespaces):
            self._kill_leftovers(namespace)
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", namespace)
        if self._root_link:
            with contextlib.suppress(RuntimeError):
                _ip("link", "del", self._root_link)  # gone with the hub already, unless the hub was not made
        self._namespaces.clear()

    async def __aenter__(self) -> Network:
        try:
            self.open()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    def _add_namespace(self, namespace: str) -> None:
        _ip("netns", "add", namespace)
        self._namespaces.append(namespace)

    def _plug(self, hub_link: str) -> None:
        _ip("-n", self.hub, "link", "set", hub_link, "master", "br0")
        _ip("-n", self.hub, "link", "set", hub_link, "up")

    @staticmethod
    def _kill_leftovers(namespace: str) -> None:
        """SIGKILL what still runs in a namespace made here (a namespace outlives its deletion while in use)."""
        with contextlib.suppress(RuntimeError):
            for pid in _ip("netns", "pids", namespace).split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
