"""The real inference service with every forward pass delayed, so a generation cannot end on its own inside a test.

Run as ``python -m support.slow_inference serve inference [flags]``; ``start_slow_inference`` spawns it the way the
launcher spawns services. Only the model's forward pass is slowed: the engine, its scheduler and gRPC are the real
ones. With the default 20 ms a step, the ~500 tokens the shipped model's context leaves take at least 10 s.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from genmesh import mesh as topology
from genmesh.cli.launcher import LAUNCHER_PID_ENV, ServiceProcess, free_port, wait_ready

STEP_DELAY_ENV = "GENMESH_TEST_STEP_DELAY_MS"
ROOT = Path(__file__).resolve().parents[2]


def slow_down_forward(delay_s: float) -> None:
    """Make every forward pass of the Llama model sleep ``delay_s`` first (this process only)."""
    from services.inference.models.llama import LlamaForCausalLM

    forward = LlamaForCausalLM.forward

    def delayed(self: LlamaForCausalLM, *args: Any, **kwargs: Any) -> Any:
        time.sleep(delay_s)
        return forward(self, *args, **kwargs)

    LlamaForCausalLM.forward = delayed  # type: ignore[method-assign]


async def start_slow_inference(log_dir: Path, *flags: str, step_delay_ms: float = 20.0) -> ServiceProcess:
    """A SERVING inference service on a free port whose forward passes each take ``step_delay_ms`` longer."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "inference.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
        STEP_DELAY_ENV: str(step_delay_ms),
        LAUNCHER_PID_ENV: str(os.getpid()),
    }
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "support.slow_inference",
            *["serve", "inference", "--host", "127.0.0.1", "--port", str(port), *flags],
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )
    service = ServiceProcess(topology.INFERENCE, f"127.0.0.1:{port}", process, log_path)
    try:
        await wait_ready(service, timeout_s=180)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    return service


def main() -> None:
    """Slow the model down, then run the `genmesh` command line."""
    slow_down_forward(float(os.environ.get(STEP_DELAY_ENV, "20")) / 1000.0)
    from genmesh.cli.main import main as genmesh_main

    genmesh_main(sys.argv[1:])


if __name__ == "__main__":
    main()
