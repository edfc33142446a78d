"""`genmesh up`'s check that the ports it was told to use are free, before it starts anything: a second mesh on
the same ports would otherwise pass its health checks against the first one."""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping


def port_problem(host: str, port: int) -> str | None:
    """Why nothing could listen on ``host``:``port`` now; None when it could.

    The probe binds with SO_REUSEADDR, as servers do, so connections of an earlier mesh lingering in TIME_WAIT do
    not count, and fails on any listener (gRPC's SO_REUSEPORT ones included, since the probe does not set it).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            return "already in use" if error.errno == errno.EADDRINUSE else (error.strerror or str(error))
    return None


def busy_ports(host: str, ports: Mapping[str, int]) -> list[str]:
    """One message per service (by name) whose port is taken or given twice; empty when all can be used."""
    problems = []
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if port == 0:  # a free one is picked
            continue
        if port in seen:
            problems.append(f"port {port} is given to both {seen[port]} and {name}")
            continue
        seen[port] = name
        problem = port_problem(host, port)
        if problem is not None:
            problems.append(f"{name} port {host}:{port} (--{name}-port): {problem}")
    return problems
