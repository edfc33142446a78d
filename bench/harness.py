"""What every benchmark shares: its command line, the final JSON line, the services it starts, percentiles."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from genmesh.cli.certs import CertDir
from genmesh.cli.launcher import Mesh, ServiceProcess, start_mesh, start_service, wait_ready
from genmesh.mesh import ServiceSpec

Settings = TypeVar("Settings")
Figures = dict[str, object]


def main(
    name: str,
    doc: str | None,
    measure: Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, Figures]],
    quick: Settings,
    full: Settings,
    options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """Parse ``--quick`` (and the benchmark's ``options``), run ``measure`` with the quick or full settings and
    print its figures, headed by the benchmark's name, its mode and the machine, as the last line: one JSON object.
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about a minute, as CI runs it")
    if options is not None:
        options(parser)
    args = parser.parse_args()
    figures = asyncio.run(measure(quick if args.quick else full, args))
    machine = f"{platform.machine()} {platform.processor() or ''}".strip()
    print(json.dumps({"benchmark": name, "mode": "quick" if args.quick else "full", "machine": machine, **figures}))


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A temporary directory for the run's logs and data, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="genmesh-bench-") as path:
        yield Path(path)


@contextlib.asynccontextmanager
async def running_mesh(
    log_dir: Path,
    extra_args: Mapping[str, Sequence[str]],
    tls: CertDir | None = None,
    metrics: bool = False,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[Mesh]:
    """The four services on free loopback ports, SERVING for the block and stopped after it; with ``tls``, mutual
    TLS on every hop (``mesh.client_tls()`` reaches them); with ``metrics``, each serves /metrics on a free port
    (``mesh.services[name].metrics_url``); ``env`` is added to the services' environment."""
    mesh = await start_mesh(log_dir=log_dir, extra_args=extra_args, tls=tls, metrics=metrics, env=env)
    try:
        yield mesh
    finally:
        await mesh.stop(grace_s=1.0)


@contextlib.asynccontextmanager
async def serving(
    spec: ServiceSpec,
    args: Sequence[str],
    address: str,
    log_dir: Path,
    ready_timeout_s: float,
    env: Mapping[str, str] | None = None,
    name: str = "",
) -> AsyncIterator[ServiceProcess]:
    """One service (``genmesh`` with ``args``), SERVING at ``address`` for the block and terminated after it;
    ``name`` (a replica's, e.g. ``inference-2``; the service's by default) names it and its log file."""
    service = await start_service(spec, args, address, log_dir, env, name)
    try:
        await wait_ready(service, ready_timeout_s)
        yield service
    finally:
        if service.process.returncode is None:
            service.process.terminate()
        await service.process.wait()


def alternate(trial: int, first: str, second: str) -> tuple[str, str]:
    """The order of the two sides in ``trial``, swapped every other trial so that neither always goes first."""
    return (first, second) if trial % 2 == 0 else (second, first)


def percentile(values: Sequence[float], q: float) -> float:
    """The value at quantile ``q`` (0 to 1) of ``values``: the nearest rank, rounded."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
