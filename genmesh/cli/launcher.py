"""Runs the mesh's services as child processes: what `genmesh up` does, and what the tests and benchmarks use."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from genmesh import mesh
from genmesh.cli.certs import CertDir
from genmesh.health import wait_until_serving
from genmesh.tasks import cancel_and_wait, wait_within
from genmesh.tls import ClientTLS

LAUNCHER_PID_ENV = "GENMESH_LAUNCHER_PID"
_PR_SET_PDEATHSIG = 1


def die_with_launcher() -> None:
    """In a service that the launcher started: get SIGTERM when the launcher dies, however it dies (Linux).

    Called by the service itself after it started (never between fork and exec, which is unsafe in a
    process with gRPC threads). A launcher that is already gone ends the service at once.
    """
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if not launcher or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(launcher):
        os.kill(os.getpid(), signal.SIGTERM)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports nobody listens on right now.

    The sockets are held open together while the ports are chosen, so no port is handed out twice.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    return free_ports(1, host)[0]


@dataclass(slots=True)
class ServiceProcess:
    """One running service process."""

    spec: mesh.ServiceSpec
    address: str
    process: asyncio.subprocess.Process
    log_path: Path | None
    name: str = ""
    """Its replica's name (``inference-2``), its key in a ``Mesh``; the service's name when left empty."""
    tls: ClientTLS | None = None
    """How to reach it when it serves TLS (readiness checks)."""
    metrics_url: str = ""
    """Where it serves Prometheus metrics; empty when it serves none."""
    args: tuple[str, ...] = ()
    """The ``genmesh`` arguments it runs with, and ``env`` the environment it was given: what restarts it."""
    env: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        self.name = self.name or self.spec.name

    def log_tail(self, lines: int = 30) -> str:
        """The end of the service's log, for error messages."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass(slots=True)
class Mesh:
    """The running service processes, by replica name (a service's name when it runs once)."""

    services: dict[str, ServiceProcess] = field(default_factory=dict)
    drain_delay_s: float = 0.0
    """The --drain-delay the services were started with."""
    tls: CertDir | None = None
    """The certificates when every service serves TLS and requires client certificates."""

    def client_tls(self) -> ClientTLS | None:
        """TLS with the client certificate, for calls to any service of a TLS mesh; None for plaintext."""
        return None if self.tls is None else self.tls.client()

    def address(self, name: str) -> str:
        """``host:port`` of a service."""
        return self.services[name].address

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the gateway first so that it drains, then the rest; SIGKILL what outlives the drain delay and
        the grace."""
        running = {p.spec for p in self.services.values()}
        order = [s for s in (mesh.GATEWAY, mesh.INFERENCE, mesh.TOOLS, mesh.RETRIEVAL) if s in running]
        for group in (order[:1], order[1:]):
            procs = [p.process for p in self.services.values() if p.spec in group]
            for proc in procs:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                if not await wait_within(proc.wait(), self.drain_delay_s + grace_s + 5.0):
                    proc.kill()
                    await proc.wait()


async def start_service(
    spec: mesh.ServiceSpec,
    args: Sequence[str],
    address: str,
    log_dir: Path | None,
    env: Mapping[str, str] | None = None,
    name: str = "",
    tls: ClientTLS | None = None,
    metrics_url: str = "",
) -> ServiceProcess:
    """Spawn ``genmesh serve`` for one service, in its own process group, logging to ``log_dir``/``name``.log
    (``name``: the replica's, the service's by default)."""
    name = name or spec.name
    log_path = None
    stream: IO[bytes] | None = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        stream = log_path.open("ab")
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "genmesh.cli",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stream,
            stderr=stream,
            env={**os.environ, **(env or {}), LAUNCHER_PID_ENV: str(os.getpid())},
            start_new_session=True,
        )
    finally:
        if stream is not None:
            stream.close()
    return ServiceProcess(spec, address, process, log_path, name, tls, metrics_url, tuple(args), env)


async def wait_ready(service: ServiceProcess, timeout_s: float) -> None:
    """Wait until the service reports SERVING; fail early, with its log, if it exits."""
    ready = asyncio.create_task(wait_until_serving(service.address, timeout_s=timeout_s, tls=service.tls))
    exited = asyncio.create_task(service.process.wait())
    try:
        done, _ = await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        if ready in done:
            ready.result()
            return
        raise RuntimeError(
            f"{service.name} exited with {service.process.returncode} before it was ready:\n{service.log_tail()}"
        )
    except TimeoutError as error:
        raise RuntimeError(f"{service.name} not ready: {error}\n{service.log_tail()}") from None
    finally:
        await cancel_and_wait(ready, exited)


def _retrieval_data_dir(env: Mapping[str, str] | None) -> str:
    """Where a retrieval service started with ``env`` keeps its store (its --data-dir's environment fallback)."""
    from services.retrieval.server import DEFAULT_DATA_DIR  # imported here: only several replicas need it

    return {**os.environ, **(env or {})}.get("GENMESH_RETRIEVAL_DATA_DIR") or DEFAULT_DATA_DIR


@dataclass(frozen=True, slots=True)
class Launch:
    """One process of a mesh: which replica, where it listens, and the ``genmesh`` arguments that run it."""

    replica: mesh.Replica
    address: str
    args: tuple[str, ...]
    metrics_url: str = ""
    """Where it serves Prometheus metrics (``--metrics-port``); empty when it serves none."""


def plan_mesh(
    host: str,
    ports: Mapping[str, int],
    counts: Mapping[str, int] | None = None,
    drain_delay_s: float = 0.0,
    extra_args: Mapping[str, Sequence[str]] | None = None,
    env: Mapping[str, str] | None = None,
    tls: CertDir | None = None,
    metrics_ports: Mapping[str, int] | None = None,
) -> list[Launch]:
    """The processes of a mesh, upstreams first: ``counts[name]`` replicas of each service (1 when absent; one
    gateway), replica ``r`` on ``ports[r.name]``, serving metrics on ``metrics_ports[r.name]`` when given.

    Each service is given its upstreams' replicas as one comma-separated target, and ``--drain-delay`` (so that
    stopping a local mesh is not slowed by a drain delay from the environment). Several retrieval replicas each
    own a store: replica ``i`` gets ``--data-dir <dir>-<i>``, ``<dir>`` being where a single one started with
    ``env`` keeps it. With ``tls``, each serves TLS with its certificate, requires client certificates, and
    presents its certificate to its upstreams. ``extra_args[name]`` (a service's name) come last, so they win.
    """
    layout = mesh.layout(counts or {})
    targets = {s.name: [f"{host}:{ports[r.name]}" for r in layout if r.spec is s] for s in mesh.SERVICES}
    plan = []
    for replica in layout:
        spec, port = replica.spec, ports[replica.name]
        args = [*mesh.replica_args(spec, host, port, targets), "--drain-delay", str(drain_delay_s)]
        if spec is mesh.RETRIEVAL and replica.count > 1:
            args += ["--data-dir", f"{_retrieval_data_dir(env)}-{replica.index}"]
        if tls is not None:
            args += [*tls.server_args(spec.name), *tls.upstream_args(spec.name)]
        metrics_url = ""
        if metrics_ports is not None:
            args += ["--metrics-port", str(metrics_ports[replica.name])]
            metrics_url = f"http://{host}:{metrics_ports[replica.name]}/metrics"
        args += (extra_args or {}).get(spec.name, ())
        plan.append(Launch(replica, f"{host}:{port}", tuple(args), metrics_url))
    return plan


async def start_mesh(
    host: str = "127.0.0.1",
    ports: Mapping[str, int] | None = None,
    log_dir: Path | None = None,
    extra_args: Mapping[str, Sequence[str]] | None = None,
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 300.0,
    replicas: Mapping[str, int] | None = None,
    drain_delay_s: float = 0.0,
    tls: CertDir | None = None,
    metrics: bool = False,
) -> Mesh:
    """Start all four services and wait until every process is SERVING.

    With ``tls`` (``genmesh certs``' files), every hop is mutual TLS; ``Mesh.client_tls()`` reaches any service.

    ``replicas[name]`` processes of a service (1 when absent), each logging to its own ``<replica name>.log``.
    ``ports[name]`` is the port of a service's first replica; the others, and services without one, get free
    ports. With ``metrics``, each process serves Prometheus metrics on a free port (``ServiceProcess.metrics_url``).
    See ``plan_mesh`` for the arguments each process gets.
    """
    counts = replicas or {}
    layout = mesh.layout(counts)
    spare = iter(free_ports(len(layout) * (2 if metrics else 1), host))
    chosen = {r.name: ((ports or {}).get(r.spec.name) if r.index == 1 else None) or next(spare) for r in layout}
    metrics_ports = {r.name: next(spare) for r in layout} if metrics else None
    plan = plan_mesh(host, chosen, counts, drain_delay_s, extra_args, env, tls, metrics_ports)
    running = Mesh(drain_delay_s=drain_delay_s, tls=tls)
    client = running.client_tls()
    try:
        for launch in plan:
            name = launch.replica.name
            service = await start_service(
                launch.replica.spec, launch.args, launch.address, log_dir, env, name, client, launch.metrics_url
            )
            running.services[name] = service
        waits = [asyncio.create_task(wait_ready(s, ready_timeout_s)) for s in running.services.values()]
        try:
            await asyncio.gather(*waits)
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
    except BaseException:
        await running.stop(grace_s=1.0)
        raise
    return running
