"""Ctrl-C in a script using the blocking Client: the call on the client's loop is cancelled (the gateway's stream
ends) before KeyboardInterrupt reaches the script, and the client stays usable. A real script in a subprocess,
interrupted with SIGINT, against a real gateway served in-process over scripted upstreams. A Client never closed
frees its loop and thread once collected."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from pathlib import Path

from served import served_gateway

from gateway.policy import ResiliencePolicy
from genmesh.cli.launcher import free_port
from genmesh.client import Client

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import sys
from genmesh.client import Client, Delta

with Client(sys.argv[1], timeout_s=60) as client:
    try:
        for event in client.generate("What does yield do?", retrieval=False):
            print(type(event).__name__, flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    try:
        client.answer("What does yield do?", retrieval=False)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    # the gateway serves one stream at a time: this one is refused unless the first was cancelled
    for event in client.generate("What does yield do?", retrieval=False, timeout_s=5):
        if isinstance(event, Delta):
            print("second", event.text, flush=True)
            break
"""


async def read_until(child: asyncio.subprocess.Process, wanted: bytes) -> None:
    """Read the script's output up to the line ``wanted``."""
    assert child.stdout is not None
    while (line := await asyncio.wait_for(child.stdout.readline(), 30)) != wanted:
        assert line, (await child.communicate())[1].decode()  # the script ended before it


async def test_ctrl_c_cancels_the_blocking_call_and_the_client_goes_on(tmp_path: Path) -> None:
    policy = ResiliencePolicy(max_streams=1)
    async with served_gateway(tmp_path, policy=policy, metrics=False) as served:
        inference = served.replicas.replicas[0].servicer
        inference.deltas, inference.delta_delay_s = [f"w{i} " for i in range(400)], 0.05  # 20 s in all
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SCRIPT, served.address, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await read_until(child, b"Delta\n")
        child.send_signal(signal.SIGINT)
        await read_until(child, b"interrupted\n")
        while len(inference.requests) < 2:  # the answer is under way
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        child.send_signal(signal.SIGINT)
        try:
            out, err = await asyncio.wait_for(child.communicate(), 15)  # an answer left running takes 20 s
        except TimeoutError:
            child.kill()
            out, err = await child.communicate()
            raise AssertionError(f"the script hung: {out.decode()} {err.decode()}") from None
    text = err.decode()
    assert child.returncode == 0, text
    assert "RuntimeError" not in text and "Traceback" not in text
    rest = out.decode().split()
    assert rest == ["interrupted", "second", "w0"], out.decode()


def test_a_client_never_closed_frees_its_thread_when_collected() -> None:
    client = Client(f"127.0.0.1:{free_port()}")
    thread, loop = client._loop.thread, client._loop.loop
    assert thread.is_alive()
    del client
    gc.collect()
    assert not thread.is_alive() and loop.is_closed()
