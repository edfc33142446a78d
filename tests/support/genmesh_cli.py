"""The `genmesh` command as a user runs it: ``python -m genmesh.cli`` in a subprocess, from the repository root."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository root: the working tree's modules shadow an installed genmesh."""


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


async def genmesh(*args: str, timeout_s: float = 60.0, env: dict[str, str] | None = None) -> Ran:
    """Run ``genmesh args...`` to its end (without an API key from the environment)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "genmesh.cli",
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "GENMESH_API_KEY": "", **(env or {})},
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())
