"""A tool plugin for e2e tests: ``nap`` logs that it began (so a test knows the call runs), then sleeps."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from services.tools.plugins import tool

log = logging.getLogger("genmesh.tools.nap")

NAPPING = "msg=napping"
"""What the log line of a nap that began holds (with the request id of the call, like every line)."""
SPEC = "support.napping:nap"
"""The tools service's --tools-module value."""


def tools_env() -> dict[str, str]:
    """The environment in which a service started by the tests can load this plugin."""
    tests = str(Path(__file__).resolve().parents[1])
    return {"PYTHONPATH": os.pathsep.join(filter(None, (tests, os.environ.get("PYTHONPATH"))))}


@tool(timeout_s=120.0, idempotent=False)
async def nap(ms: int) -> dict[str, int]:
    """Log that the nap began, sleep for ms milliseconds, then say so.

    Args:
        ms: Milliseconds to sleep.
    """
    log.info("napping", extra={"ms": ms})
    await asyncio.sleep(ms / 1000)
    return {"slept_ms": ms}
