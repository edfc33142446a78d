"""The processes bench/scale.py runs: one retrieval and one tools service, named inference replicas, and
gateways over chosen replicas, each started on a free loopback port and stopped when the fleet closes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import harness
from genmesh import mesh
from genmesh.cli.launcher import ServiceProcess, free_port

HOST = "127.0.0.1"
READY_TIMEOUT_S = 300.0


@dataclass(slots=True)
class Fleet:
    """Services by name; each runs until the fleet's block ends (or a scenario kills or drains it)."""

    log_dir: Path
    stack: contextlib.AsyncExitStack
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    """Where each process listens, known before it is ready (an upstream's address is in its callers' flags)."""

    def _serving(
        self, spec: mesh.ServiceSpec, name: str, extra: Sequence[str], targets: Mapping[str, Sequence[str]]
    ) -> contextlib.AbstractAsyncContextManager[ServiceProcess]:
        port = free_port(HOST)
        self.addresses[name] = f"{HOST}:{port}"
        upstreams = {up: [self.addresses[n] for n in names] for up, names in targets.items()}
        args = [*mesh.replica_args(spec, HOST, port, upstreams), *extra]
        return harness.serving(spec, args, self.addresses[name], self.log_dir, READY_TIMEOUT_S, name=name)

    async def start_all(self, *starts: tuple[mesh.ServiceSpec, str, Sequence[str]]) -> None:
        """Start processes (spec, name, extra flags) together, to run until the fleet closes, and wait until
        every one is SERVING. Retrieval and tools (one each, named so, started first) are the upstreams of the
        processes that call them."""
        servings = []
        for spec, name, extra in starts:
            targets = {up.name: [up.name] for up in mesh.UPSTREAMS.get(spec.name, ())}
            servings.append((name, self._serving(spec, name, extra, targets)))

        async def start(name: str, serving: contextlib.AbstractAsyncContextManager[ServiceProcess]) -> None:
            self.services[name] = await self.stack.enter_async_context(serving)

        async with asyncio.TaskGroup() as group:
            for name, serving in servings:
                group.create_task(start(name, serving))

    def address(self, name: str) -> str:
        return self.addresses[name]

    def pid(self, name: str) -> int:
        return self.services[name].process.pid

    @contextlib.asynccontextmanager
    async def gateway(self, name: str, replicas: Sequence[str], extra: Sequence[str] = ()) -> AsyncIterator[str]:
        """A gateway over the inference ``replicas`` (names) for the block, stopped after it; yields its address."""
        targets = {"retrieval": ["retrieval"], "tools": ["tools"], "inference": list(replicas)}
        jobs = ["--jobs-db", str(self.log_dir / f"{name}-jobs.db")]  # its own, not the default one in the tree
        async with self._serving(mesh.GATEWAY, name, [*jobs, *extra], targets) as service:
            self.services[name] = service
            yield service.address

    def log_lines(self, name: str) -> list[str]:
        """What ``name`` has logged so far."""
        log_path = self.services[name].log_path
        if log_path is None or not log_path.exists():
            return []
        return log_path.read_text(errors="replace").splitlines()

    def generate_calls(self, name: str, request_prefix: str) -> int:
        """Generate calls that ``name`` (an inference replica) logged for request ids starting ``request_prefix``."""
        needle = f"request_id={request_prefix}"
        return sum(
            "msg=rpc " in line and needle in line and "InferenceService/Generate " in line
            for line in self.log_lines(name)
        )

    async def kill(self, name: str) -> None:
        """kill -9."""
        process = self.services[name].process
        os.kill(process.pid, signal.SIGKILL)
        await process.wait()

    def terminate(self, name: str) -> None:
        """SIGTERM: the service drains (its --drain-delay, then --grace for the calls in flight) and exits."""
        self.services[name].process.send_signal(signal.SIGTERM)


@contextlib.asynccontextmanager
async def fleet(log_dir: Path) -> AsyncIterator[Fleet]:
    """An empty fleet; every process started in it is stopped when the block ends (the last started first)."""
    async with contextlib.AsyncExitStack() as stack:
        yield Fleet(log_dir, stack)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds this process (the benchmark's client) has used so far."""
    times = os.times()
    return times.user + times.system


def machine_busy_seconds() -> float:
    """CPU seconds all of the machine's cores have been busy so far (not idle, not waiting on I/O), from /proc."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
