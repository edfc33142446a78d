"""What `genmesh up` does while the mesh runs: a service that exits is started again with the same arguments, on
the same port, after a backoff (1 s, doubling up to 30 s; back to 1 s once a run lasted a minute), and the
launcher says so. The gateway degrades while an upstream is gone and uses it again once it is back."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from genmesh.cli.launcher import Mesh, ServiceProcess, start_service, wait_ready
from genmesh.tasks import cancel_and_wait, wait_within


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between restarts of one service."""

    first_s: float = 1.0
    max_s: float = 30.0
    healthy_after_s: float = 60.0
    """A run at least this long resets the delay to ``first_s``."""

    def next(self, previous_s: float | None, ran_s: float) -> float:
        """The delay before the next restart, after a run of ``ran_s`` that followed a delay of ``previous_s``."""
        if previous_s is None or ran_s >= self.healthy_after_s:
            return self.first_s
        return min(previous_s * 2, self.max_s)


async def supervise(
    running: Mesh,
    stop: asyncio.Event,
    backoff: Backoff = Backoff(),
    ready_timeout_s: float = 300.0,
    out: TextIO = sys.stderr,
) -> None:
    """Keep every service of ``running`` up until ``stop`` is set; ``running.services`` always holds the current
    processes (what Mesh.stop stops). Returns once ``stop`` is set and no restart is under way."""
    keepers = [
        asyncio.create_task(_keep(running, name, stop, backoff, ready_timeout_s, out)) for name in running.services
    ]
    try:
        await asyncio.gather(*keepers)
    finally:
        for keeper in keepers:
            keeper.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    await wait_within(stop.wait(), seconds)
    return stop.is_set()


async def _keep(
    running: Mesh, name: str, stop: asyncio.Event, backoff: Backoff, ready_timeout_s: float, out: TextIO
) -> None:
    delay: float | None = None
    started = time.monotonic()
    while True:
        service = running.services[name]
        exited = asyncio.create_task(service.process.wait())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        await cancel_and_wait(exited, stopping)
        if stop.is_set():
            return
        delay = backoff.next(delay, time.monotonic() - started)
        log = f" (log: {service.log_path})" if service.log_path is not None else ""
        _say(out, f"{name} exited with status {service.process.returncode}{log}; restarting it in {delay:g} s")
        while True:
            if await _stopped_within(stop, delay):
                return
            try:
                restarted = await _restart(service)
                break
            except Exception as failed:  # e.g. OSError: its log cannot be opened; the other services go on
                delay = backoff.next(delay, 0)
                _say(out, f"{name} could not be restarted: {_first_line(failed)}; trying again in {delay:g} s")
        running.services[name] = restarted  # at once: Mesh.stop must find the new process
        started = time.monotonic()
        ready = asyncio.create_task(wait_ready(restarted, ready_timeout_s))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
        await cancel_and_wait(stopping, None if ready.done() else ready)
        error = None if ready.cancelled() else ready.exception()
        if stop.is_set():
            return
        if error is not None:
            _say(out, f"{name} did not come back: {_first_line(error)}")
            continue
        _say(out, f"{name} is back (pid {restarted.process.pid})")


async def _restart(service: ServiceProcess) -> ServiceProcess:
    log_dir = None if service.log_path is None else service.log_path.parent
    return await start_service(
        service.spec,
        service.args,
        service.address,
        log_dir,
        service.env,
        service.name,
        service.tls,
        service.metrics_url,
    )


def _first_line(error: BaseException) -> str:
    """The first line of ``error``'s message, or its type's name when it has none."""
    return (str(error).splitlines() or [type(error).__name__])[0]


def _say(out: TextIO, line: str) -> None:
    with contextlib.suppress(OSError):
        print(line, file=out, flush=True)
