"""A gateway process with ``--api-keys`` in front of the session mesh, shared by the security tests of one run
(tests/security/conftest.py), its keys, and the user's tools run as subprocesses: grpcurl and the genmesh CLI."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from support.jobs_gateway import start_jobs_gateway

from gateway.auth.caller import Limits, Scope
from gateway.auth.file_keys import FileKeyStore
from genmesh.cli.launcher import Mesh, ServiceProcess

GRPCURL = Path(sys.executable).parent / "grpcurl"
GENMESH = Path(sys.executable).parent / "genmesh"

#: name → (scopes, limits) of the valid keys; "gone" (revoked) and "old" (expired) are added to them.
KEYS: dict[str, tuple[list[Scope], Limits]] = {
    "ops": ([Scope.ADMIN], Limits()),
    "app": ([Scope.GENERATE], Limits()),
    "batch": ([Scope.JOBS], Limits()),
    "owner-a": ([Scope.GENERATE, Scope.JOBS], Limits()),
    "owner-b": ([Scope.JOBS], Limits()),
    "one-a-minute": ([Scope.GENERATE], Limits(requests_per_minute=1)),
}


@dataclass
class KeyedGateway:
    process: ServiceProcess
    channel: grpc.aio.Channel
    store_path: Path
    secrets: dict[str, str]

    def log(self) -> str:
        assert self.process.log_path is not None
        return self.process.log_path.read_text(errors="replace")

    def audit_lines(self) -> list[str]:
        return [line for line in self.log().splitlines() if "msg=audit" in line]

    def header(self, key: str) -> str:
        """grpcurl's ``-H`` value that presents ``key``."""
        return f"authorization: Bearer {self.secrets[key]}"


async def start_keyed_gateway(mesh: Mesh, root: Path) -> KeyedGateway:
    """A gateway on the upstreams of ``mesh`` that requires the keys of ``root/api-keys.json`` (made here)."""
    path = root / "api-keys.json"
    store = FileKeyStore(path)
    secrets = {}
    for name, (scopes, limits) in KEYS.items():
        secrets[name] = (await store.create(name, scopes, limits))[1]
    gone, secrets["gone"] = await store.create("gone", [Scope.GENERATE])
    await store.revoke(gone.id)
    old, secrets["old"] = await store.create("old", [Scope.GENERATE], expire_time=time.time() + 3600)
    await store.update(old.id, lambda r: dataclasses.replace(r, expire_time=time.time() - 1))
    process = await start_jobs_gateway(mesh, root / "jobs.db", root, "--api-keys", str(path))
    return KeyedGateway(process, grpc.aio.insecure_channel(process.address), path, secrets)


async def run_tool(program: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``program args...`` to its end: exit status, stdout, stderr. ``env`` is added to this environment."""
    process = await asyncio.create_subprocess_exec(
        str(program),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode or 0, out.decode(), err.decode()


async def grpcurl(*args: str) -> tuple[int, str, str]:
    """``grpcurl args...``: exit status, stdout, stderr."""
    return await run_tool(GRPCURL, *args)
