"""`genmesh serve` with a --metrics-port another process holds: one clear line on stderr and a non-zero exit,
not a traceback (and no gRPC server left listening)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_metrics_port_in_use_stops_start_up_with_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["serve", "tools", "--port", "0", "--retrieval-target", "", "--metrics-port", str(port)]
        done = subprocess.run(
            [sys.executable, "-m", "genmesh.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    why = f"cannot serve metrics on 127.0.0.1:{port} (--metrics-port): Address already in use"
    assert last == f"genmesh serve tools: {why}"
