"""`genmesh status` against a real mesh of four processes, run as a user runs it (a subprocess of the CLI that
reaches only the gateway's port): every service shown SERVING with its version and figures; --json parses and
lists every service; with the tools process killed it is shown down and the command still exits 0; with the
gateway gone it exits non-zero saying so."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from genmesh import mesh
from genmesh.cli.launcher import start_mesh
from genmesh.version import version

ROOT = Path(__file__).resolve().parents[2]


async def status(target: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """`genmesh status --target TARGET FLAGS...`, this tree's code (not an installed console script)."""
    command = [sys.executable, "-m", "genmesh.cli", "status", "--target", target, *flags]
    return await asyncio.to_thread(subprocess.run, command, cwd=ROOT, capture_output=True, text=True, timeout=60)


def rows(output: str) -> dict[str, list[str]]:
    """The replica table's rows by service (one replica each here)."""
    found = {}
    for line in output.splitlines():
        cells = line.split()
        if cells and cells[0] in mesh.BY_NAME:
            found[cells[0]] = cells
    return found


async def test_status_shows_every_service_and_a_killed_one_down(tmp_path: Path) -> None:
    running = await start_mesh(log_dir=tmp_path / "logs", extra_args={"inference": ["--threads", "1"]})
    try:
        gateway = running.address("gateway")
        shown = await status(gateway)
        assert shown.returncode == 0, shown.stderr
        table = rows(shown.stdout)
        assert sorted(table) == sorted(spec.name for spec in mesh.SERVICES)
        for name, cells in table.items():
            assert cells[1] == running.address(name), "where the gateway reaches it (itself: where it listens)"
            assert cells[2:4] == ["SERVING", version()], shown.stdout
        assert "python-reference" in shown.stdout, "retrieval's demo collection"
        assert "calculator" in shown.stdout, "the tools' names"
        assert "Jobs: queued 0" in shown.stdout
        assert shown.stdout.rstrip().endswith("4 of 4 replicas serving")

        as_json = await status(gateway, "--json")
        assert as_json.returncode == 0, as_json.stderr
        replicas = json.loads(as_json.stdout)["replicas"]
        assert sorted(r["service"] for r in replicas) == sorted(spec.name for spec in mesh.SERVICES)
        assert {r["state"] for r in replicas} == {"REPLICA_STATE_SERVING"}
        inference = next(r for r in replicas if r["service"] == "inference")
        assert inference["target"] == running.address("inference") and inference["inference"]["model"]
        assert int(inference["inference"]["kvCapacityTokens"]) > 0

        tools = running.services["tools"].process
        tools.kill()
        await tools.wait()
        down = await status(gateway)
        assert down.returncode == 0, "the gateway answered: services down are shown, not an error"
        after = rows(down.stdout)
        assert after["tools"][2] == "NOT_SERVING" and "UNAVAILABLE" in down.stdout
        assert all(after[name][2] == "SERVING" for name in ("gateway", "retrieval", "inference"))
        assert f"not serving: tools {running.address('tools')}" in down.stdout
        down_json = json.loads((await status(gateway, "--json")).stdout)["replicas"]
        assert next(r for r in down_json if r["service"] == "tools")["state"] == "REPLICA_STATE_NOT_SERVING"
    finally:
        await running.stop(grace_s=2.0)

    gone = await status(gateway, "--timeout", "2")
    assert gone.returncode != 0 and f"cannot reach the gateway at {gateway}" in gone.stderr
