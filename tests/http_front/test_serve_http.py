"""`genmesh serve http` as its own process before a real gateway (served in-process over scripted upstreams): it
answers, and SIGTERM lets a running answer, streamed over SSE or a WebSocket, finish before it exits 0."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from served import served_gateway

from genmesh.channels import open_channel
from genmesh.cli.launcher import free_port
from http_front.front import served_front, spawned_front

ROOT = Path(__file__).resolve().parents[2]
CHAT = {"messages": [{"role": "user", "content": "What does yield do?"}], "stream": True}


async def sse_answer(url: str, process: asyncio.subprocess.Process) -> list[str]:
    """The lines of a streamed answer, SIGTERM sent after the first."""
    async with (
        httpx.AsyncClient(base_url=url, timeout=20) as http,
        http.stream("POST", "/v1/chat/completions", json=CHAT) as response,
    ):
        lines = response.aiter_lines()
        first = await anext(lines)
        process.send_signal(signal.SIGTERM)
        return [first] + [line async for line in lines]


async def ws_answer(url: str, process: asyncio.subprocess.Process) -> list[str]:
    """The messages of a WebSocket answer as SSE-like lines, SIGTERM sent after the first."""
    async with websockets.connect(url.replace("http://", "ws://") + "/v1/ws") as ws:
        await ws.send(json.dumps({"type": "generate", "id": 1, "request": CHAT}))
        messages: list[dict[str, Any]] = [json.loads(await ws.recv())]
        process.send_signal(signal.SIGTERM)
        while messages[-1]["type"] not in ("done", "error"):
            messages.append(json.loads(await ws.recv()))
    chunks = [m for m in messages if m["type"] == "chunk" and m["choices"]]
    assert messages[-1] == {"type": "done", "ref": 1, "finish_reason": "stop", "usage": messages[-1]["usage"]}
    return [f"data: {json.dumps(c)}" for c in chunks] + ["data: [DONE]"]


@pytest.mark.parametrize("answer", [sse_answer, ws_answer])
async def test_serve_http_answers_and_finishes_a_running_answer_on_sigterm(tmp_path: Path, answer: Any) -> None:
    async with served_gateway(tmp_path, metrics=False) as served:
        served.replicas.replicas[0].servicer.delta_delay_s = 0.3  # about a second per answer
        async with spawned_front(served.address, tmp_path / "http.log", "--log-level", "warning") as (process, url):
            first, *rest = await answer(url, process)
            code = await asyncio.wait_for(process.wait(), 15)
    assert first.startswith("data: ") and "Generators " in first, rest
    assert rest[-2:] == ["data: [DONE]", ""] or rest[-1] == "data: [DONE]"
    assert code == 0, (tmp_path / "http.log").read_text()


async def health_check(address: str) -> tuple[int, str]:
    """``python -m gateway.http.healthcheck address`` (the compose file's check): its exit code and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.http.healthcheck", address, stderr=asyncio.subprocess.PIPE
    )
    _, err = await process.communicate()
    return int(process.returncode or 0), err.decode()


async def test_the_container_health_check_says_healthy_then_names_what_is_wrong(tmp_path: Path) -> None:
    async with (
        served_gateway(tmp_path, metrics=False) as served,
        open_channel(served.address) as channel,
        served_front(channel) as front,
    ):
        assert await health_check(front.url.removeprefix("http://")) == (0, "")
    code, said = await health_check(f"127.0.0.1:{free_port()}")
    assert code == 1 and "not healthy" in said


def test_the_front_needs_none_of_the_model_extras() -> None:
    """The gateway's image (no inference or retrieval extras) runs the front: importing it needs none of them."""
    extras = ("numpy", "torch", "faiss", "sentence_transformers", "tokenizers", "safetensors", "jinja2", "transformers")
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {extras!r}: raise ImportError('an extra: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import gateway.http.server, gateway.http.app\n"
    )
    done = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr
