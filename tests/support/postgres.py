"""A throwaway Postgres server for tests and benchmarks: ``initdb`` and ``pg_ctl`` in a temporary directory.

The server listens on a free loopback port (its unix socket in the same directory), trusts local connections,
and skips fsync (its data is deleted with it). Postgres refuses to run as root: under root, the directory is
given to Debian's ``postgres`` user and the commands run as that user through ``runuser``. Without the server
binaries (Debian's ``postgresql`` package) starting fails with PostgresMissing, never silently.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql

from genmesh.cli.launcher import free_port

#: Where Debian's postgresql package puts the server binaries, one folder per major version.
DEBIAN_BINARIES = "/usr/lib/postgresql/*/bin"
SYSTEM_USER = "postgres"
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
}


class PostgresMissing(RuntimeError):
    """The server binaries (or, under root, the ``postgres`` user) are not installed."""


def server_binaries() -> Path:
    """The folder of ``initdb`` and ``pg_ctl``: the newest Debian version, else the PATH's."""
    folders = sorted(glob.glob(DEBIAN_BINARIES), key=lambda f: int(Path(f).parent.name.split(".")[0]))
    for folder in reversed(folders):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    raise PostgresMissing(
        f"the PostgreSQL server binaries (initdb, pg_ctl) are in neither {DEBIAN_BINARIES} nor the PATH:"
        " install Debian's postgresql package (apt-get install postgresql)"
    )


def _as_server_user(command: list[str]) -> list[str]:
    """``command`` as the user the server may run as: ourselves, or ``postgres`` when we are root."""
    return ["runuser", "-u", SYSTEM_USER, "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str]) -> None:
    done = subprocess.run(_as_server_user(command), capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


@contextlib.contextmanager
def running_postgres() -> Iterator[str]:
    """A new cluster, started; yields the URL of its ``postgres`` database; stops and deletes it afterwards."""
    binaries = server_binaries()
    root = Path(tempfile.mkdtemp(prefix="genmesh-pg-"))
    data, sockets, log = root / "data", root / "sockets", root / "server.log"
    try:
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                raise PostgresMissing(f"no {SYSTEM_USER!r} user to run Postgres as root with") from None
            os.chown(root, owner.pw_uid, owner.pw_gid)
        _run([str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        _run(["mkdir", str(sockets)])
        port = _start(binaries, data, sockets, log)
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            _run([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _start(binaries: Path, data: Path, sockets: Path, log: Path, tries: int = 3) -> int:
    """Start the server on a free port (another one when that port was taken meanwhile); the port."""
    failure = ""
    for _ in range(tries):
        port = free_port()
        options = {**SETTINGS, "port": str(port), "unix_socket_directories": str(sockets)}
        flags = " ".join(f"-c {name}={value}" for name, value in options.items())
        try:
            _run([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", flags, "start"])
            return port
        except RuntimeError as error:
            failure = str(error)
    raise RuntimeError(f"Postgres did not start: {failure}\n{log.read_text(errors='replace')}")


def create_database(server_url: str) -> str:
    """A new, empty database on the server of ``server_url``; its URL."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return server_url.rsplit("/", 1)[0] + f"/{name}"
