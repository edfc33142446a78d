"""Services started by the launcher never outlive it, even when it is killed with SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from genmesh import mesh

SCRIPT = """
import asyncio, sys
from pathlib import Path
from genmesh.cli.launcher import start_mesh

async def main():
    running = await start_mesh(log_dir=Path(sys.argv[1]), extra_args={"inference": ["--threads", "1"]})
    print(" ".join(str(s.process.pid) for s in running.services.values()), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_services_die_with_a_killed_launcher(tmp_path: Path) -> None:
    launcher = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRIPT, str(tmp_path), stdout=asyncio.subprocess.PIPE
    )
    assert launcher.stdout is not None
    line = await asyncio.wait_for(launcher.stdout.readline(), 180)
    pids = [int(p) for p in line.split()]
    assert len(pids) == len(mesh.SERVICES) and all(_alive(p) for p in pids)

    launcher.send_signal(signal.SIGKILL)
    await launcher.wait()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not [p for p in pids if _alive(p)], "services outlived their launcher"
